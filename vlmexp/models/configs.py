"""Named model configs (``conf/model/<name>.yaml``) loaded at run time, e.g. ``model.fallback``."""

from __future__ import annotations

import copy

from omegaconf import DictConfig, OmegaConf

from vlmexp.errors import ConfigError
from vlmexp.paths import conf_dir


def model_names() -> list[str]:
    """The ``model`` group's options (files starting with ``_`` are bases, not options)."""
    return sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml") if not p.stem.startswith("_"))


def load_group_option(group: str, name: str) -> DictConfig:
    """One option of a config group with its own defaults list applied (``defaults: [_base, _self_]``),
    as Hydra composes it, for options loaded at run time."""
    node = OmegaConf.load(conf_dir() / group / f"{name}.yaml")
    defaults = list(node.pop("defaults", None) or [])
    if "_self_" not in defaults:
        defaults.append("_self_")
    merged = OmegaConf.create()
    for item in defaults:
        merged = OmegaConf.merge(merged, node if item == "_self_" else load_group_option(group, str(item)))
    return merged


def model_config(name: str, root_cfg: DictConfig, key: str = "model.fallback") -> DictConfig:
    """The ``model`` group option ``name``, typed like ``model`` and placed in a copy of ``root_cfg``
    so that its interpolations (``${paths.cache_dir}``) resolve as in a composed run."""
    from vlmexp.config.schema import ModelConfig

    path = conf_dir() / "model" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{key}={name}: no such model config (known: {', '.join(model_names())})")
    node = OmegaConf.merge(OmegaConf.structured(ModelConfig), load_group_option("model", name))
    cfg = copy.deepcopy(root_cfg)
    cfg.model = node
    return cfg.model
