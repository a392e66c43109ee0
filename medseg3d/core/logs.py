"""Console logging that follows ``sys.stdout``/``sys.stderr`` as they are when a record is emitted.

A ``logging.StreamHandler`` keeps the stream it was given. The bundles' ``logging.conf`` (read by MONAI's
``ConfigWorkflow`` with ``logging.config.fileConfig``, which accepts only ``logging`` classes) and
``prep_brats`` configure the root logger once per process; when that happens while ``sys.stdout`` is
redirected (a caller capturing a command's output, a test runner) the handler would keep writing to that
redirected stream after it is closed, and every later log record of the process ends in a "--- Logging
error ---" traceback. ``ConsoleHandler`` looks the stream up at every record instead, and
``follow_console()`` (called after MONAI has read a bundle's ``logging.conf``) swaps the root logger's
handlers on the current stdout/stderr for it.

>>> import io, contextlib, logging
>>> handler = ConsoleHandler("stdout")
>>> record = logging.makeLogRecord({"msg": "hello", "levelno": logging.INFO})
>>> buffer = io.StringIO()
>>> with contextlib.redirect_stdout(buffer):
...     handler.emit(record)
>>> buffer.getvalue()
'hello\\n'
"""

from __future__ import annotations

import logging
import sys


class ConsoleHandler(logging.StreamHandler):
    """``StreamHandler`` on ``sys.<name>`` (``stdout`` or ``stderr``) as it is at each record."""

    def __init__(self, name: str = "stdout") -> None:
        if name not in ("stdout", "stderr"):
            raise ValueError(f"name must be 'stdout' or 'stderr', got {name!r}")
        self._stream_name = name
        super().__init__()

    @property
    def stream(self):  # noqa: D102 (the current sys.stdout / sys.stderr)
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns one: the current one is used instead
        pass


def follow_console(logger: logging.Logger | None = None) -> None:
    """Replace ``logger``'s (default: root's) plain ``StreamHandler``s on the current ``sys.stdout`` or
    ``sys.stderr`` by ``ConsoleHandler``s with the same level, formatter and filters."""
    logger = logger or logging.getLogger()
    for index, handler in enumerate(list(logger.handlers)):
        if type(handler) is not logging.StreamHandler:
            continue
        name = "stdout" if handler.stream is sys.stdout else "stderr" if handler.stream is sys.stderr else None
        if name is None:
            continue
        console = ConsoleHandler(name)
        console.setLevel(handler.level)
        console.setFormatter(handler.formatter)
        for f in handler.filters:
            console.addFilter(f)
        logger.handlers[index] = console
