"""Model adapters: one per model family, named by ``model.adapter._target_`` in the model config."""

from __future__ import annotations

from vlmexp.models.adapters.base import ModelAdapter, ModelParts


def model_adapter(model_cfg) -> ModelAdapter:
    """The adapter the model config names (``model.adapter``); a config without one (a hand-made one, or
    one saved by an older vlmexp) gets the default transformers adapter."""
    from hydra.utils import instantiate

    from vlmexp.errors import ConfigError

    node = model_cfg.get("adapter") if hasattr(model_cfg, "get") else None
    if not node:
        from vlmexp.models.adapters.transformers import TransformersAdapter

        return TransformersAdapter()
    if not node.get("_target_"):
        raise ConfigError(f"model={model_cfg.get('name')}: model.adapter needs a _target_ naming the adapter class")
    adapter = instantiate(node, _convert_="all")
    if not isinstance(adapter, ModelAdapter):
        raise ConfigError(f"model.adapter._target_={node._target_}: not a vlmexp ModelAdapter")
    return adapter


__all__ = ["ModelAdapter", "ModelParts", "model_adapter"]
