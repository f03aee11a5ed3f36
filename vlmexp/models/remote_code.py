"""Models whose modelling code ships with the checkpoint (``trust_remote_code``), loaded under
transformers 5 with the two repairs such code often needs there:

- transformers 5 sets ``all_tied_weights_keys`` in ``post_init()``, and ``from_pretrained`` fails
  (``object has no attribute 'all_tied_weights_keys'``) when the model's ``__init__`` never calls it,
  as code written for transformers 4 often does not: the class is patched to call it;
- transformers 5 builds the model on the meta device and gives non-persistent buffers (rotary
  tables, attention masks, position codes) empty storage, re-initialising only those of its own
  modules, so the remote code's buffers hold garbage: they are recomputed by building the model
  once more with real buffers and meta weights (no weight memory) and copied over.
"""

from __future__ import annotations

import logging
from typing import Any

from vlmexp.errors import EngineError

log = logging.getLogger(__name__)


def remote_class(auto_cls, checkpoint: str, model_cfg) -> tuple[type, Any]:
    """The class the checkpoint's ``config.json`` maps ``auto_cls`` to (its ``auto_map``), imported
    from the checkpoint's own code, with the ``post_init`` repair applied; and the config."""
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from vlmexp.models.adapters.transformers import from_pretrained

    kwargs = dict(trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.get("revision"))
    config = from_pretrained(AutoConfig, checkpoint, model_cfg, **kwargs)
    reference = (getattr(config, "auto_map", None) or {}).get(auto_cls.__name__)
    if not reference:
        raise EngineError(f"model={model_cfg.name}: '{checkpoint}' has no auto_map entry for {auto_cls.__name__} "
                          "in its config.json: it does not ship the remote code this adapter loads")
    cls = get_class_from_dynamic_module(reference, checkpoint, revision=model_cfg.get("revision"))
    ensure_post_init(cls)
    return cls, config


def ensure_post_init(cls: type) -> None:
    """Make ``cls(config)`` run ``post_init()`` when its own ``__init__`` does not (once per class)."""
    if getattr(cls, "_vlmexp_post_init", False):
        return
    original = cls.__init__

    def __init__(self, config, *args, **kwargs):
        original(self, config, *args, **kwargs)
        if "all_tied_weights_keys" not in self.__dict__:
            self.post_init()

    cls.__init__ = __init__
    cls._vlmexp_post_init = True


def skeleton(cls: type, config) -> Any:
    """``cls(config)`` with its weights on the meta device (no memory) and its buffers computed for real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return cls(config)


def restore_non_persistent_buffers(model, fresh) -> list[str]:
    """Copy ``fresh``'s non-persistent buffers into ``model`` (on each buffer's device and dtype); the
    names of those that differed, i.e. that loading had left uninitialised."""
    import torch

    computed = dict(fresh.named_buffers())
    repaired = []
    for name, buffer in list(model.named_non_persistent_buffers()):
        value = computed.get(name)
        if value is None or value.is_meta:
            continue
        value = value.to(device=buffer.device, dtype=buffer.dtype)
        if not torch.equal(value, buffer):
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = value
            repaired.append(name)
    return repaired


def load_remote_model(auto_cls, checkpoint: str, model_cfg, check=None, **kwargs) -> Any:
    """``auto_cls.from_pretrained`` of a remote-code model with both repairs. ``check(skeleton)`` runs
    before any weight is read, so a model of the wrong kind is refused without loading gigabytes."""
    from vlmexp.models.adapters.transformers import from_pretrained

    cls, config = remote_class(auto_cls, checkpoint, model_cfg)
    if check is not None:
        check(skeleton(cls, config))
    model = from_pretrained(auto_cls, checkpoint, model_cfg, **kwargs)
    repaired = restore_non_persistent_buffers(model, skeleton(cls, model.config))
    if repaired:
        log.info("recomputed %d non-persistent buffer(s) that loading left uninitialised: %s", len(repaired),
                 ", ".join(repaired[:5]))
    return model
