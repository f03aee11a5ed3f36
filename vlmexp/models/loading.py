"""Load a model and its processor through ``from_pretrained``, from the Hub or a local folder."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate

from vlmexp.errors import ConfigError, EngineError
from vlmexp.hardware import Placement

log = logging.getLogger(__name__)


def resolve_checkpoint(model_cfg) -> str:
    """The Hub id or local folder to load: a local builder wins over ``hf_id``."""
    if model_cfg.get("local_builder"):
        return str(instantiate(model_cfg.local_builder))
    if not model_cfg.get("hf_id"):
        raise ConfigError(f"model={model_cfg.name}: neither model.hf_id nor model.local_builder is set")
    return model_cfg.hf_id


def load_processor(checkpoint: str, model_cfg):
    from transformers import AutoProcessor

    kwargs = dict(trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.get("revision"))
    processor = _from_pretrained(AutoProcessor, checkpoint, model_cfg, **kwargs)
    # Dynamic-resolution processors (Qwen2-VL family) take a pixel budget; fixed-size ones do not.
    if hasattr(getattr(processor, "image_processor", None), "merge_size"):
        budget = {"shortest_edge": model_cfg.min_pixels, "longest_edge": model_cfg.max_pixels}
        processor = _from_pretrained(AutoProcessor, checkpoint, model_cfg, size=budget, **kwargs)
    tokenizer = getattr(processor, "tokenizer", processor)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def load_model(checkpoint: str, model_cfg, placement: Placement, *, for_training: bool = False):
    from transformers import AutoModelForImageTextToText

    kwargs = dict(dtype=placement.torch_dtype(), attn_implementation=placement.attn_implementation,
                  trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.get("revision"))
    if placement.quantization:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=placement.quantization == 4, load_in_8bit=placement.quantization == 8,
            bnb_4bit_compute_dtype=placement.torch_dtype(), bnb_4bit_quant_type="nf4")
        kwargs["device_map"] = {"": 0}
    elif placement.device == "cuda" and not for_training:
        kwargs["device_map"] = "auto"  # spreads large models over the visible GPUs
    model = _from_pretrained(AutoModelForImageTextToText, checkpoint, model_cfg, **kwargs)
    if "device_map" not in kwargs and not for_training:
        model.to(placement.device)
    model.eval()
    return model


def _from_pretrained(auto_cls, checkpoint: str, model_cfg, **kwargs):
    try:
        return auto_cls.from_pretrained(checkpoint, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        where = "folder" if Path(checkpoint).exists() else "Hub id"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(f"model={model_cfg.name}: cannot load {auto_cls.__name__} from {where} "
                          f"'{checkpoint}': {first}") from exc
