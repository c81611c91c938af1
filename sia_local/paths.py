"""Where sia-local keeps what it derives: one answer for every module that writes to disk.

Calibration profiles, the built default reward, fitted objectives and models assembled from
packages go under one cache folder: `$SIA_CACHE_DIR` when set (tests point it at a temporary
folder), else the platform's user cache dir (~/.cache/sia-local on Linux).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator


def _private(path: Path, suffix: str) -> Path:
    """A name beside `path` that no other thread or process uses (a writer's own temporary)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `path` whole or not at all (a private temporary file beside it, then a rename): an interrupted rewrite
    loses nothing, and concurrent writers never write into each other's file (the last rename wins)."""
    tmp = _private(path, ".tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def partial_dir(out: Path) -> Path:
    """A fresh private folder beside `out` to build it in; `publish` moves it into place."""
    tmp = _private(out, ".partial")
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, out: Path) -> Path:
    """Move the finished folder `tmp` to `out` in one rename: a reader sees the old folder or the new one, never half
    of one. An older `out` is replaced (moved aside first, then deleted)."""
    old = _private(out, ".old") if out.exists() else None
    if old is not None:
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


@contextlib.contextmanager
def build_lock(name: str) -> Iterator[None]:
    """Hold a lock named `name` across threads and processes (a file lock in the cache), so that something built
    once on first use (the default reward, the built-in objectives) is built by one of them while the others wait."""
    folder = cache_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.lock", "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; the atomic publish still keeps every reader safe
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cache_dir() -> Path:
    """Where sia-local keeps derived files (calibration profiles, built reward models, assembled models)."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("SIA_CACHE_DIR") or user_cache_dir("sia-local"))
