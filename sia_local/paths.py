"""Where sia-local keeps what it derives: one answer for every module that writes to disk.

Calibration profiles, the built default reward, fitted objectives and models assembled from
packages go under one cache folder: `$SIA_CACHE_DIR` when set (tests point it at a temporary
folder), else the platform's user cache dir (~/.cache/sia-local on Linux).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where sia-local keeps derived files (calibration profiles, built reward models, assembled models)."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("SIA_CACHE_DIR") or user_cache_dir("sia-local"))
