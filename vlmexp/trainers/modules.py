"""Find a VLM's parts (vision encoder, projector, language model) to freeze or adapt.

Looked up by the attribute names transformers' VLM classes use for them, not by model names.
"""

from __future__ import annotations

_VISION = ("visual", "vision_tower", "vision_model", "vision_encoder")
_PROJECTOR = ("multi_modal_projector", "mm_projector", "merger")
_LANGUAGE = ("language_model", "text_model")


def _find(model, names: tuple[str, ...]):
    """(qualified name, module) of the first submodule whose own name is in ``names``."""
    for qualified, module in model.named_modules():
        if qualified.rsplit(".", 1)[-1] in names:
            return qualified, module
    return None, None


def vision_module(model):
    return _find(model, _VISION)[1]


def projector_module(model):
    return _find(model, _PROJECTOR)[1]


def language_module(model):
    """(qualified name, module) of the language model inside the VLM."""
    return _find(model, _LANGUAGE)


def vision_module_name(model) -> str | None:
    return _find(model, _VISION)[0]


def projector_module_name(model) -> str | None:
    return _find(model, _PROJECTOR)[0]


def set_trainable(module, trainable: bool) -> None:
    if module is not None:
        for param in module.parameters():
            param.requires_grad_(trainable)


def language_linear_names(model) -> list[str]:
    """Every nn.Linear inside the language model: the default LoRA targets."""
    import torch

    prefix, _ = language_module(model)
    if prefix is None:
        raise ValueError("cannot find the language model inside this VLM")
    return [name for name, mod in model.named_modules()
            if name.startswith(prefix + ".") and isinstance(mod, torch.nn.Linear)]


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; a weight shared by two modules counts once."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
