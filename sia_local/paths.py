"""Where sia-local keeps what it derives: one answer for every module that writes to disk.

Calibration profiles, the built default reward, fitted objectives and models assembled from
packages go under one cache folder: `$SIA_CACHE_DIR` when set (tests point it at a temporary
folder), else the platform's user cache dir (~/.cache/sia-local on Linux).
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `path` whole or not at all (a temporary file beside it, then a rename): an interrupted rewrite loses nothing."""
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def cache_dir() -> Path:
    """Where sia-local keeps derived files (calibration profiles, built reward models, assembled models)."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("SIA_CACHE_DIR") or user_cache_dir("sia-local"))
