"""The params a run logs: the experiment's choices and values a person compares runs by.

The whole resolved config is the run's ``resolved_config.yaml`` artifact; the params leave out what
only clutters a comparison: class paths (``_target_``), unset keys (null), folders and files (the
``paths`` and ``logger`` groups, any key naming a dir, root or file, any value that is an absolute or
home path), free text (``notes``), how the run is driven (``resume``, ``task.default_mode``), the
settings of a switch that is off (``train.lora.*`` when ``train.lora.enabled=false``, ``task.explain_*``
when ``task.explain=false``), a group's ``name`` that repeats its choice, and the task's keys that
change nothing in this run (its ``inert_keys``); the training settings of a run that does not train.
Each prompt is logged as a short hash of its text (``<key>_sha256``), so runs with different prompts
differ in a param. The Hydra choice of each config group (``model=tiny``,
``engine=hf``) is a param named after the group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

SKIPPED_GROUPS = ("paths", "logger", "sweep", "hydra")
FREE_TEXT = ("notes", "description")
PATH_SUFFIXES = ("_dir", "_root", "root", "_file", "_path")
RUN_CONTROL = ("resume", "task.default_mode")
HASH_LENGTH = 12


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def _is_path(key: str, value: Any) -> bool:
    leaf = key.rsplit(".", 1)[-1]
    return leaf.endswith(PATH_SUFFIXES) or (isinstance(value, str) and value.startswith(("/", "~", "./", "../")))


def _switched_off(flat: Mapping[str, Any]) -> set[str]:
    """The keys a switch that is off makes moot: the siblings of ``enabled: false``, and ``X_*`` beside
    ``X: false``."""
    moot: set[str] = set()
    for key, value in flat.items():
        if value is not False:
            continue
        parent, _, leaf = key.rpartition(".")
        prefix = f"{parent}." if parent else ""
        moot |= {k for k in flat if (leaf == "enabled" and k.startswith(prefix) and k != key)
                 or k.startswith(f"{key}_")}
    return moot


def prompt_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def readable_params(resolved: Mapping[str, Any], choices: Mapping[str, str | None] | None = None,
                    inert: tuple[str, ...] = ()) -> dict[str, Any]:
    """The params of a run of the ``resolved`` config; ``choices`` are Hydra's config group choices,
    ``inert`` the task's keys that change nothing with these values."""
    params: dict[str, Any] = {group: choice for group, choice in (choices or {}).items()
                              if choice is not None and not group.startswith("hydra") and group not in SKIPPED_GROUPS}
    if "train" not in str(resolved.get("mode", "train")):
        params.pop("trainer", None)
        resolved = {k: v for k, v in resolved.items() if k != "train"}
    flat = _flatten({k: v for k, v in resolved.items() if k not in SKIPPED_GROUPS})
    skipped = {f"task.{k}" for k in inert} | _switched_off(flat) | set(RUN_CONTROL)
    skipped |= {f"{group}.name" for group, choice in params.items() if flat.get(f"{group}.name") == choice}
    for key, value in flat.items():
        leaf = key.rsplit(".", 1)[-1]
        if value is None or "_target_" in key or leaf in FREE_TEXT or key in skipped or _is_path(key, value):
            continue
        if "prompt" in leaf and isinstance(value, str):
            params[f"{key}_sha256"] = prompt_digest(value)
        else:
            params[key] = value
    return params
