"""Turn the ``hardware`` and ``model`` config into a device, a dtype and an attention kernel."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from vlmexp.errors import ConfigError

_PRECISIONS = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32",
               "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


@dataclass(frozen=True)
class Placement:
    device: str
    dtype: str  # torch dtype name
    attn_implementation: str
    quantization: int | None

    @property
    def mixed_precision(self) -> str:
        """accelerate's name for the precision."""
        return {"bfloat16": "bf16", "float16": "fp16"}.get(self.dtype, "no")

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("hardware.device=cuda: no CUDA device is visible (try hardware=cpu or hardware=auto)")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("hardware.device=mps: MPS is not available on this machine (try hardware=auto)")
    if requested not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"hardware.device={requested}: expected auto, cpu, cuda or mps")
    return requested


def resolve_dtype(precision: str, model_dtype: str, device: str) -> str:
    import torch

    if precision != "auto":
        if precision not in _PRECISIONS:
            raise ConfigError(f"hardware.precision={precision}: expected auto, bf16, fp16 or fp32")
        return _PRECISIONS[precision]
    if device == "cpu":
        return "float32"  # half precision on CPU is slow and lossy
    if model_dtype not in ("auto", None):
        if model_dtype not in _PRECISIONS:
            raise ConfigError(f"model.dtype={model_dtype}: expected auto, bfloat16, float16 or float32")
        wanted = _PRECISIONS[model_dtype]
        if wanted == "bfloat16" and device == "cuda" and not torch.cuda.is_bf16_supported():
            return "float16"
        return wanted
    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float16"


def resolve_attention(requested: str, device: str, dtype: str) -> str:
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if requested == "auto":
        if has_flash and device == "cuda" and dtype in ("bfloat16", "float16"):
            return "flash_attention_2"
        return "sdpa"
    if requested == "flash_attention_2":
        if not has_flash:
            raise ConfigError("hardware.attn_implementation=flash_attention_2: the flash-attn package is not "
                              "installed (pip install flash-attn --no-build-isolation), or use auto")
        if device != "cuda":
            raise ConfigError(f"hardware.attn_implementation=flash_attention_2 needs CUDA, not {device}")
    elif requested not in ("sdpa", "eager"):
        raise ConfigError(f"hardware.attn_implementation={requested}: expected auto, flash_attention_2, sdpa "
                          "or eager")
    return requested


def resolve_placement(hardware, model) -> Placement:
    device = resolve_device(hardware.device)
    dtype = resolve_dtype(hardware.precision, model.dtype, device)
    quant = hardware.quantization
    if quant is not None:
        if quant not in (4, 8):
            raise ConfigError(f"hardware.quantization={quant}: expected 4, 8 or null")
        if device != "cuda":
            raise ConfigError(f"hardware.quantization={quant}: bitsandbytes quantisation needs CUDA, not {device}")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(f"hardware.quantization={quant}: install bitsandbytes (pip install bitsandbytes)")
    return Placement(device, dtype, resolve_attention(hardware.attn_implementation, device, dtype), quant)
