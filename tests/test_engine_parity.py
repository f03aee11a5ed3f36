"""The same model gives the same predictions and metrics whichever engine serves it: in process
(engine=hf), behind Ollama's API (engine=ollama) and behind OpenAI's (engine=openai)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import compose_config
from tests.fake_servers import FakeServer, HFResponder
from vlmexp.runner import run

TAG = "vlmexp-tiny:latest"


def _untimed(metrics: dict) -> dict:
    """The metrics that do not depend on timing. Timings (latency_p50_s, tokens_per_s, model_load_s,
    ...) end in _s or name latency; the Early-Fire score folds a latency term in."""
    return {k: v for k, v in metrics.items()
            if not (k.endswith("_s") or "latency" in k or k.startswith("early_fire_score"))}


def _agree(remote: dict, hf: dict) -> None:
    """Equal on every untimed metric both runs have (an engine may add its own, e.g. model_load_s)."""
    remote, hf = _untimed(remote), _untimed(hf)
    shared = set(remote) & set(hf)
    assert shared >= {"accuracy", "f1", "parse_success_rate", "num_samples", "engine_errors", "prompt_tokens_total",
                      "completion_tokens_total"}
    assert {k: remote[k] for k in shared} == {k: hf[k] for k in shared}


def _load(checkpoint: str, cache_dir):
    from vlmexp.hardware import resolve_placement
    from vlmexp.models.loading import load_model, load_processor

    cfg = compose_config(["model=tiny", f"paths.cache_dir={cache_dir}"])
    return (load_model(checkpoint, cfg.model, resolve_placement(cfg.hardware, cfg.model)),
            load_processor(checkpoint, cfg.model))


@pytest.fixture(scope="module")
def talkative_checkpoint(tiny_checkpoint, cache_dir, tmp_path_factory) -> str:
    """The tiny model with every weight matrix scaled by 10. Still random, but where the tiny model
    answers blank lines whatever it is shown, this one's greedy answers change with every image, so
    any difference in the pixels, prompt or settings an engine sends shows up in the text."""
    import torch

    model, processor = _load(tiny_checkpoint, cache_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.mul_(10.0)
    target = tmp_path_factory.mktemp("talkative-tiny")
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return str(target)


@pytest.fixture(scope="module")
def model_server(talkative_checkpoint, cache_dir):
    """That model, loaded once, behind both HTTP APIs."""
    from vlmexp.engines.hf import HFEngine

    model, processor = _load(talkative_checkpoint, cache_dir)
    with FakeServer(HFResponder(HFEngine(batch_size=1, model=model, processor=processor)), models=[TAG]) as server:
        yield server


def test_hf_ollama_and_openai_engines_agree(model_server, talkative_checkpoint, cache_dir, tmp_path):
    common = ["task=smoke", "model=tiny", "model.local_builder=null", f"model.hf_id={talkative_checkpoint}",
              "mode=eval", f"paths.cache_dir={cache_dir}", "data.limit=4", "task.max_new_tokens=24", "logger=none",
              "resume=false"]
    engines = {"hf": ["engine=hf"],
               "ollama": ["engine=ollama", f"engine.host={model_server.ollama_host}", f"engine.model_tag={TAG}",
                          "engine.concurrency=2"],
               "openai": ["engine=openai", f"engine.base_url={model_server.openai_base_url}",
                          f"engine.model_name={TAG}", "engine.concurrency=3"]}
    metrics, predictions = {}, {}
    for name, overrides in engines.items():
        metrics[name] = run(compose_config(common + overrides), output_dir=tmp_path / name)
        lines = (tmp_path / name / "predictions.jsonl").read_text().splitlines()
        predictions[name] = [{k: v for k, v in json.loads(line).items() if k not in ("latency_s", "wall_s")}
                             for line in lines]

    served = [c for c in model_server.chats if c["outcome"] == "answered"]
    assert len(served) == 8  # 4 samples through each API, none twice
    assert len(predictions["hf"]) == 4
    assert len({p["raw"] for p in predictions["hf"]}) == 4  # real generations, a different one per image
    assert predictions["ollama"] == predictions["hf"]
    assert predictions["openai"] == predictions["hf"]
    _agree(metrics["ollama"], metrics["hf"])
    _agree(metrics["openai"], metrics["hf"])
    assert metrics["hf"]["engine_errors"] == 0.0
    assert metrics["hf"]["completion_tokens_total"] > 0
    assert metrics["ollama"]["model_load_s"] == pytest.approx(0.5 + 3 * 0.001)  # the server's first load
