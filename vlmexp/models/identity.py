"""Which weights a checkpoint holds, without loading them: the Hub commit, or a hash of a folder's
config and weight files."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from vlmexp.content import file_hash

log = logging.getLogger(__name__)

#: Files hashed whole: what the model is (config) and how its weights are split (index).
_WHOLE = ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json", "adapter_config.json")
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt")


def checkpoint_identity(checkpoint: str, revision: str | None = None) -> dict[str, str]:
    """``{"checkpoint", "sha256"}`` for a local folder (config and index hashed whole, each weight
    file by its size and sampled bytes); ``{"checkpoint", "revision", "commit"}`` for a Hub id."""
    folder = Path(checkpoint).expanduser()
    if folder.is_dir():
        return {"checkpoint": folder.name, "sha256": folder_hash(folder)}
    return {"checkpoint": checkpoint, "revision": revision or "main", "commit": _hub_commit(checkpoint, revision)}


def folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    names = {p for pattern in _WEIGHTS for p in folder.rglob(pattern)}
    names |= {p for name in _WHOLE for p in folder.rglob(name)}
    for path in sorted(names):
        digest.update(f"{path.relative_to(folder).as_posix()}:{file_hash(path, path.stat().st_size)}\n".encode())
    return digest.hexdigest()[:16]


def _hub_commit(repo_id: str, revision: str | None) -> str:
    """The commit ``revision`` resolves to (from the local cache when offline); 'unknown' if neither
    the Hub nor the cache can tell."""
    try:
        from huggingface_hub import hf_hub_download

        config = Path(hf_hub_download(repo_id, "config.json", revision=revision))
    except Exception as exc:  # offline and not cached, no such repo: loading will say so
        log.warning("cannot find the Hub commit of %s (%s)", repo_id, str(exc).splitlines()[0] if str(exc) else exc)
        return "unknown"
    return config.parent.name  # .../snapshots/<commit>/config.json
