"""Training stages: ``train.stages`` items, each overriding keys of the ``train`` block.

An item names how the backbone trains (``backbone``: ``frozen``, ``full`` or ``lora``), optionally a
``name``, and any ``train`` key (``lr``, ``epochs``, ``patience``, ``lora``, ...). An empty list is
one frozen stage with the ``train`` block as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from omegaconf import DictConfig, OmegaConf

from vlmexp.config.schema import ClassifierTrainConfig
from vlmexp.errors import ConfigError

BACKBONE_MODES = ("frozen", "full", "lora")


@dataclass
class Stage:
    name: str
    backbone: str  # frozen | full | lora
    train: DictConfig  # the train block with this stage's overrides


def resolve_stages(train: DictConfig) -> list[Stage]:
    """The stages of ``train.stages``, each checked; unknown keys and bad values fail naming the item."""
    items = list(train.stages or [])
    if not items:
        return [Stage("head", "frozen", train)]
    known = {f.name for f in fields(ClassifierTrainConfig)} - {"stages"}
    stages = []
    for i, item in enumerate(items):
        key = f"train.stages[{i}]"
        if not isinstance(item, (dict, DictConfig)):
            raise ConfigError(f"{key}={item}: expected a mapping such as {{backbone: frozen, lr: 1e-3}}")
        values = dict(item)
        for name in values:
            if name not in known | {"name", "backbone"}:
                raise ConfigError(f"{key}.{name}: unknown key (known keys: name, backbone, "
                                  f"{', '.join(sorted(known))})")
        backbone = values.pop("backbone", "frozen")
        if backbone not in BACKBONE_MODES:
            raise ConfigError(f"{key}.backbone={backbone}: expected one of {', '.join(BACKBONE_MODES)}")
        name = str(values.pop("name", f"stage{i + 1}"))
        try:
            merged = OmegaConf.merge(train, values)
        except Exception as exc:
            raise ConfigError(f"{key}: {str(exc).splitlines()[0]}") from None
        for field in ("epochs", "batch_size", "grad_accum", "patience"):
            if merged[field] < 1:
                raise ConfigError(f"{key}.{field}={merged[field]}: must be >= 1")
        if merged.lr <= 0:
            raise ConfigError(f"{key}.lr={merged.lr}: must be > 0")
        if merged.lora.quant_bits:
            raise ConfigError(f"{key}.lora.quant_bits={merged.lora.quant_bits}: the backbone is loaded once for "
                              "all stages; quantise it with hardware.quantization instead")
        stages.append(Stage(name, backbone, merged))
    return stages
