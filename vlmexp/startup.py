"""Checks that run before the tracking run opens, so a run that cannot work stops in one line and
leaves nothing behind: a writable cache dir, and room for checkpoints when training."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from vlmexp.errors import ConfigError


def check_writable(folder: Path) -> None:
    """``folder`` exists (created if needed) and a file can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"paths.cache_dir={folder}: cannot write there ({exc.strerror or exc}); set "
                          "paths.cache_dir to a writable folder") from None


def check_free_space(folder: Path, min_free_gb: float) -> None:
    """At least ``min_free_gb`` GiB free where the checkpoints go."""
    free = shutil.disk_usage(folder).free
    if free < min_free_gb * 2**30:
        raise ConfigError(f"{folder}: only {free / 2**30:.2f} GiB free, training needs at least "
                          f"{min_free_gb:g} GiB for checkpoints (paths.min_free_gb); free some space or set "
                          "paths.cache_dir elsewhere")
