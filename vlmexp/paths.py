"""Where vlmexp finds its configs and keeps its caches, whatever the working directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _bundled_or_source(name: str) -> Path:
    # A built wheel ships the folder inside the package; a source checkout (editable install)
    # keeps it at the repository root, one level up.
    for candidate in (PACKAGE_DIR / name, PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"vlmexp installation is incomplete: no '{name}' folder near {PACKAGE_DIR}")


def conf_dir() -> Path:
    return _bundled_or_source("conf")


def experiments_dir() -> Path:
    return _bundled_or_source("experiments")


def source_root() -> Path | None:
    """The git checkout vlmexp runs from, if any (for the commit tag)."""
    root = PACKAGE_DIR.parent
    return root if (root / ".git").exists() else None


def expand(path: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(os.fspath(path))).resolve()


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Create ``target`` with ``build(folder)`` unless it exists. The build goes into a temporary
    sibling that is renamed at the end, so an existing ``target`` is always complete (an interrupted
    build leaves nothing behind, and of two racing processes the first rename wins)."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        if not target.exists():
            from vlmexp.atomic import fsync_dir, fsync_tree

            fsync_tree(tmp)  # the files are on disk before the name says the folder is complete
            tmp.rename(target)
            fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
