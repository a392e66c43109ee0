"""Console logging set up while the output was redirected keeps working after that stream is closed."""

from __future__ import annotations

import contextlib
import io
import logging
import logging.config
from pathlib import Path

import pytest

from medseg3d.core.logs import follow_console

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("bundle", sorted(p.name for p in (REPO / "bundles").iterdir() if p.is_dir()))
def test_bundle_logging_follows_the_current_stdout(bundle: str, capsys) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):  # a caller capturing a first command's output
            conf = REPO / "bundles" / bundle / "configs" / "logging.conf"
            logging.config.fileConfig(conf, disable_existing_loggers=False)  # as MONAI's ConfigWorkflow does
            follow_console()  # as medseg3d.bundle.workflow does right after
        captured.close()
        logging.getLogger("medseg3d.test").warning("after the first command")
        out, err = capsys.readouterr()
        assert "after the first command" in out
        assert "Logging error" not in err and "closed file" not in err
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
