"""Load a model and its processor through its adapter, from the Hub or a local folder."""

from __future__ import annotations

from hydra.utils import instantiate

from vlmexp.errors import ConfigError
from vlmexp.hardware import Placement
from vlmexp.models.adapters import model_adapter


def resolve_checkpoint(model_cfg) -> str:
    """The Hub id or local folder to load: a local builder wins over ``hf_id``."""
    if model_cfg.get("local_builder"):
        return str(instantiate(model_cfg.local_builder))
    if not model_cfg.get("hf_id"):
        raise ConfigError(f"model={model_cfg.name}: neither model.hf_id nor model.local_builder is set")
    return model_cfg.hf_id


def load_processor(checkpoint: str, model_cfg):
    return model_adapter(model_cfg).load_processor(checkpoint, model_cfg)


def load_model(checkpoint: str, model_cfg, placement: Placement, *, for_training: bool = False):
    return model_adapter(model_cfg).load_model(checkpoint, model_cfg, placement, for_training=for_training)
