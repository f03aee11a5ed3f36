"""What makes a run reproducible: config fingerprint, dataset fingerprint, code and package versions."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vlmexp.paths import source_root

#: ``engine.<key>`` prices (any currency): read by the runner for the cost metrics, never passed to the
#: engine, and left out of the config fingerprint (they change no prediction).
COST_KEYS = ("cost_per_1k_input_tokens", "cost_per_1k_output_tokens", "cost_per_image")


def config_fingerprint(cfg: DictConfig, mode: str) -> str:
    """Hash of the resolved config parts that affect predictions. The engine's own ``execution_keys``
    (how it runs, not what it answers), the task's ``derived_keys`` (what it makes of the stored
    predictions) and ``data.limit`` are left out, so that, for example, raising data.limit or
    engine.concurrency reuses the finished predictions; ``train.num_workers`` likewise."""
    from hydra.utils import get_class

    execution_keys = get_class(cfg.engine._target_).execution_keys
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in ("logger", "paths", "resume", "hydra", "eval", "sweep"):
        data.pop(key, None)
    data["data"].pop("limit", None)
    data["engine"] = {k: v for k, v in data["engine"].items() if k not in execution_keys and k not in COST_KEYS}
    task_cls = get_class(cfg.task._target_)
    derived = tuple(getattr(task_cls, "derived_keys", ()))  # keys applied after the predictions
    if hasattr(task_cls, "inert_keys"):
        derived += tuple(task_cls.inert_keys(data["task"]))
    data["task"] = {k: v for k, v in data["task"].items() if k not in derived and k != "description"}
    data["model"].pop("box_format", None)  # how generated Q&A write boxes, not what the model answers
    for key in ("detector", "captioner"):  # task=annotate's plugins; absent (None) elsewhere
        if data.get(key) is None:
            data.pop(key, None)
    data["hardware"] = {k: data["hardware"][k] for k in ("precision", "quantization")}
    if "train" not in mode:
        data.pop("train", None)
    else:  # how many processes read the training examples changes no weight
        data["train"].pop("num_workers", None)
    data["mode"] = mode
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sample_record(sample) -> dict:
    """A sample's fields (id, labels), its file named by name and size."""
    record = dataclasses.asdict(sample) if dataclasses.is_dataclass(sample) else {"id": sample.id}
    path = getattr(sample, "path", None)
    if path is not None:
        p = Path(path)
        record["path"] = p.name
        record["size"] = p.stat().st_size if p.exists() else -1
    return record


def dataset_fingerprint(splits: dict[str, list | None]) -> str:
    """Hash of every sample's id, label and file size, per split."""
    digest = hashlib.sha256()
    for split in sorted(splits):
        for sample in splits[split] or []:
            digest.update(json.dumps([split, sample_record(sample)], sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def git_commit() -> str:
    """Commit of the vlmexp source itself (found from the package location, not the cwd)."""
    root = source_root()
    if root is None:
        return "unknown (installed package)"
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in ("vlmexp", "torch", "transformers", "peft", "accelerate", "mlflow", "hydra-core"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
