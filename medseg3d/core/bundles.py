"""Where a bundle named on the command line is: a folder path, or a name looked up in ``$MEDSEG3D_BUNDLES``.

A source checkout passes ``--bundle bundles/brats_mri_resunet_3d``. An installed package or the container image
keeps its bundles elsewhere (the image: ``/opt/medseg3d/bundles``, set in ``MEDSEG3D_BUNDLES``), so a bare name,
``--bundle brats_mri_resunet_3d``, is found there, as nnU-Net finds a dataset by name in ``nnUNet_raw``.
"""

from __future__ import annotations

import os
from pathlib import Path

BUNDLES_ENV = "MEDSEG3D_BUNDLES"


def find_bundle(bundle: str | os.PathLike) -> Path:
    """``bundle`` when it is a folder; else the first ``<entry>/<bundle>`` folder holding ``configs/``, for each
    entry of ``$MEDSEG3D_BUNDLES`` (``os.pathsep``-separated); else ``bundle`` unchanged, so that loading it
    reports what is missing (``make_workflow``).

    >>> find_bundle("no/such/bundle")
    PosixPath('no/such/bundle')
    """
    path = Path(bundle)
    if path.is_dir() or path.is_absolute():
        return path
    for root in filter(None, os.environ.get(BUNDLES_ENV, "").split(os.pathsep)):
        candidate = Path(root) / path
        if (candidate / "configs").is_dir():
            return candidate
    return path
