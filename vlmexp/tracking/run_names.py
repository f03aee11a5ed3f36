"""Run names that say what differs: ``{task} {model} {engine} {overrides}`` (``smoke tiny hf lr=0.003``).

The overrides are the job's own, shortened as Hydra's ``override_dirname`` writes them: each key cut
to its last component (more where two would read the same), group choices already in the name left
out, values as the job received them. In a sweep only the swept keys are shown: the sweep's callback
notes them in the sweep folder (``SWEPT_FILE``) before any job starts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

SWEPT_FILE = "swept_keys.json"  # in a sweep's folder: {key: the values the sweep gives it, as written}
IN_NAME = ("task", "model", "engine")  # the groups whose choice the name already shows
#: Keys that say where things go, not what the experiment is: never part of a name.
HIDDEN = ("paths", "logger", "hydra")
MAX_NAME = 250  # MLflow's limit on a run name


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _hidden(key: str) -> bool:
    return key.replace("/", ".").split(".", 1)[0] in HIDDEN


def engine_choice(cfg: DictConfig) -> str:
    """The engine's short name: its Hydra choice (``hf``, ``ollama``); without Hydra (a config composed
    in Python), its class name without ``Engine`` (``HFEngine`` -> ``hf``)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("engine")
        if choice:
            return str(choice)
    name = str(OmegaConf.select(cfg, "engine._target_", default="") or "none").rsplit(".", 1)[-1]
    return (name[:-len("Engine")] if name.endswith("Engine") and len(name) > 6 else name).lower()


def shorten(overrides: Iterable[str]) -> list[str]:
    """``train.lr=0.003`` -> ``lr=0.003``; keys that would read the same keep more components."""
    pairs = [(_key(o), o.split("=", 1)[1]) for o in overrides if "=" in o]
    parts = {key: 1 for key, _ in pairs}
    while True:
        short = {key: ".".join(key.replace("/", ".").split(".")[-n:]) for key, n in parts.items()}
        clash = {k for k in short if list(short.values()).count(short[k]) > 1 and parts[k] < len(k.split("."))}
        if not clash:
            return [f"{short[key]}={value}" for key, value in pairs]
        for key in clash:
            parts[key] += 1


def shown(overrides: Iterable[str], swept: Iterable[str] | None = None) -> list[str]:
    """The overrides a name shows: the swept ones in a sweep, else all but group choices already in the
    name and where-things-go keys."""
    swept = set(swept) if swept is not None else None
    out = []
    for o in overrides:
        key = _key(o)
        if "=" not in o or key in IN_NAME or _hidden(key):
            continue
        if swept is None or key in swept:
            out.append(o)
    return out


def read_swept(sweep: str | Path | None) -> dict[str, str] | None:
    """The swept keys the sweep's callback noted (None outside a sweep, or a sweep without the callback)."""
    if not sweep:
        return None
    path = Path(sweep) / SWEPT_FILE
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def run_label(cfg: DictConfig, overrides: Iterable[str] | None = None, sweep: str | Path | None = None) -> str:
    """The run's name, also the title of its plots."""
    swept = read_swept(sweep)
    head = [str(cfg.task.name), str(cfg.model.name), engine_choice(cfg)]
    return " ".join(head + shorten(shown(overrides or [], swept)))[:MAX_NAME]


def swept_overrides(config: DictConfig) -> dict[str, str]:
    """The keys a sweep varies, with their values as written: the command line's sweep overrides
    (``train.lr=1e-3,3e-3``, ``range(...)``) and a sweeper's search space (``hydra.sweeper.params``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    found: dict[str, str] = {}
    fixed: set[str] = set()  # set to one value on the command line: a search space's entry for it is unused
    for override in parser.parse_overrides(list(OmegaConf.select(config, "hydra.overrides.task") or [])):
        key = override.get_key_element().lstrip("+~")
        if override.is_sweep_override():
            found[key] = ",".join(override.sweep_string_iterator())
        else:
            fixed.add(key)
    params = OmegaConf.select(config, "hydra.sweeper.params")
    for key, value in (OmegaConf.to_container(params) if params is not None else {}).items():
        if str(key) not in fixed and parser.parse_override(f"{key}={value}").is_sweep_override():
            found.setdefault(str(key), str(value))
    return found


def sweep_label(config: DictConfig, swept: dict[str, str]) -> str:
    """The sweep parent's name: ``sweep smoke tiny hf: lr=0.001,0.003``."""
    choices = OmegaConf.select(config, "hydra.runtime.choices") or {}
    head = [str(config.task.name) if "task" not in swept else None,
            str(config.model.name) if "model" not in swept else None,
            str(choices.get("engine") or engine_choice(config)) if "engine" not in swept else None]
    name = " ".join(["sweep", *(h for h in head if h)])
    tail = shorten(f"{k}={v}" for k, v in swept.items() if not _hidden(k))
    return (f"{name}: {' '.join(tail)}" if tail else name)[:MAX_NAME]
