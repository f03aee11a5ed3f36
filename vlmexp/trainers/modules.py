"""Freezing and LoRA targets over a model's parts, as its adapter names them (never by model name)."""

from __future__ import annotations

from vlmexp.models.adapters import ModelParts


def set_trainable(module, trainable: bool) -> None:
    if module is not None:
        for param in module.parameters():
            param.requires_grad_(trainable)


def freeze_parts(model, parts: ModelParts, *, vision: bool, projector: bool, language: bool) -> None:
    """Everything trainable, then the named parts frozen as asked (the output head goes with the
    language model)."""
    set_trainable(model, True)
    set_trainable(ModelParts.module(parts.vision), not vision)
    set_trainable(ModelParts.module(parts.projector), not projector)
    set_trainable(ModelParts.module(parts.language), not language)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if language and output is not None:
        set_trainable(output, False)


def language_linear_names(model, parts: ModelParts) -> list[str]:
    """Every nn.Linear inside the language model: the default LoRA targets."""
    import torch

    prefix = ModelParts.name(parts.language)
    if prefix is None:
        raise ValueError("cannot find the language model inside this VLM")
    return [name for name, mod in model.named_modules()
            if name.startswith(prefix + ".") and isinstance(mod, torch.nn.Linear)]


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; a weight shared by two modules counts once."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def with_lora(model, parts: ModelParts, lora, *, train_in_full: tuple[str, ...] = (),
              gradient_checkpointing: bool = False):
    """LoRA adapters (peft) on ``lora.target_modules`` (default ``all-linear``: every linear layer of the
    language model); the modules named in ``train_in_full`` train in full beside them. With
    ``lora.quant_bits`` the quantised base is prepared for k-bit training first (QLoRA)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if lora.get("quant_bits"):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    targets = lora.target_modules
    if targets in (None, "all-linear"):
        targets = language_linear_names(model, parts)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=targets if isinstance(targets, str) else list(targets),
                        modules_to_save=list(train_in_full) or None, bias="none")
    return get_peft_model(model, config)


def unfrozen_parts(parts: ModelParts, *, vision: bool, projector: bool) -> tuple[str, ...]:
    """The vision encoder and projector left unfrozen, by name, without a part inside another."""
    full: list[str] = []
    for name, frozen in ((ModelParts.name(parts.vision), vision), (ModelParts.name(parts.projector), projector)):
        if name and not frozen and not any(name.startswith(f + ".") for f in full):
            full.append(name)
    return tuple(full)
