"""Hardware config -> device, dtype, attention kernel; impossible requests fail with one line."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose_config
from vlmexp.errors import ConfigError
from vlmexp.hardware import resolve_attention, resolve_dtype, resolve_placement


def placement(*overrides):
    cfg = compose_config(list(overrides))
    return resolve_placement(cfg.hardware, cfg.model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallbacks of a machine without CUDA")
def test_auto_on_a_cpu_machine():
    p = placement("hardware=auto", "model=qwen7b")
    assert (p.device, p.dtype, p.attn_implementation, p.mixed_precision) == ("cpu", "float32", "sdpa", "no")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallbacks of a machine without CUDA")
@pytest.mark.parametrize("overrides,needle", [
    (["hardware=cuda"], "hardware.device=cuda: no CUDA device"),
    (["hardware=multi_gpu"], "hardware.device=cuda"),
    (["hardware=cpu", "hardware.quantization=4"], "hardware.quantization=4: bitsandbytes quantisation needs CUDA"),
    (["hardware=cpu", "hardware.attn_implementation=flash_attention_2"], "flash_attention_2"),
    (["hardware=cpu", "hardware.precision=fp8"], "hardware.precision=fp8"),
    (["hardware=cpu", "hardware.attn_implementation=fast"], "hardware.attn_implementation=fast"),
])
def test_impossible_requests_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        placement(*overrides)


def test_precision_rules():
    assert resolve_dtype("auto", "bfloat16", "cpu") == "float32"
    assert resolve_dtype("bf16", "auto", "cpu") == "bfloat16"
    assert resolve_dtype("fp16", "bfloat16", "cuda") == "float16"
    assert resolve_dtype("auto", "float32", "mps") == "float32"
    assert resolve_dtype("auto", "auto", "mps") == "float16"


def test_eager_and_sdpa_are_honoured():
    assert resolve_attention("eager", "cpu", "float32") == "eager"
    assert resolve_attention("auto", "cpu", "float32") == "sdpa"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallbacks of a machine without CUDA")
def test_hardware_error_stops_the_run_before_tracking(cache_dir, tmp_path):
    from vlmexp.runner import run

    cfg = compose_config([f"paths.cache_dir={cache_dir}", "hardware=cuda", "mode=eval", "data.limit=2"])
    with pytest.raises(ConfigError, match="hardware.device=cuda"):
        run(cfg, output_dir=tmp_path)
    import mlflow

    assert mlflow.search_runs(experiment_names=["smoke"], output_format="list") == []
    assert OmegaConf.select(cfg, "hardware.device") == "cuda"
