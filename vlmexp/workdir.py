"""A run's work dir: named by what its results depend on, described by ``inputs.json``, emptied by
``resume=false``."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from vlmexp.atomic import write_text_atomic
from vlmexp.runlock import LOCK_FILE

log = logging.getLogger(__name__)


def run_key(fingerprint: str, data: str, identity: dict[str, str]) -> str:
    """The work dir's name: the config fingerprint, then a hash of the data and the model identity."""
    blob = json.dumps([data, identity], sort_keys=True)
    return f"{fingerprint}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def prepare_work_dir(work_dir: Path, inputs: dict, resume: bool) -> None:
    """Start over when ``resume`` is false; say why when an earlier run of the same config is not reused."""
    manifest = work_dir / "inputs.json"
    if not resume and manifest.exists():
        log.info("resume=false: starting over (removing what %s holds)", work_dir)
        for entry in work_dir.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    elif not manifest.exists():
        _explain_new_key(work_dir, inputs)
    write_text_atomic(manifest, json.dumps(inputs, indent=2, sort_keys=True) + "\n")


def _explain_new_key(work_dir: Path, inputs: dict) -> None:
    """One line naming what changed since the latest run of the same config (data or model)."""
    earlier = []
    for path in work_dir.parent.glob(f"{inputs['config_fingerprint']}-*/inputs.json"):
        try:
            earlier.append((path.stat().st_mtime_ns, path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    if not earlier:
        return
    _, path, before = max(earlier, key=lambda item: item[0])
    changes = []
    if before.get("data_fingerprint") != inputs["data_fingerprint"]:
        changes.append("the data changed")
    old, new = before.get("model_identity") or {}, inputs["model_identity"]
    if old != new:
        diff = ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new))
                         if old.get(k) != new.get(k))
        changes.append(f"the model changed ({diff})")
    if changes:
        log.info("not reusing the predictions in %s: %s", path.parent, "; ".join(changes))
