"""Named model configs (``conf/model/<name>.yaml``) loaded at run time, e.g. ``model.fallback``."""

from __future__ import annotations

import copy

from omegaconf import DictConfig, OmegaConf

from vlmexp.errors import ConfigError
from vlmexp.paths import conf_dir


def model_names() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))


def model_config(name: str, root_cfg: DictConfig, key: str = "model.fallback") -> DictConfig:
    """The ``model`` group option ``name``, typed like ``model`` and placed in a copy of ``root_cfg``
    so that its interpolations (``${paths.cache_dir}``) resolve as in a composed run."""
    from vlmexp.config.schema import ModelConfig

    path = conf_dir() / "model" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{key}={name}: no such model config (known: {', '.join(model_names())})")
    node = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path))
    cfg = copy.deepcopy(root_cfg)
    cfg.model = node
    return cfg.model
