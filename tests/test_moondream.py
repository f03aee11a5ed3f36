"""Moondream2 through its adapter, on stand-ins of both interface generations
(``tests/moondream_standin.py``) loaded through the real ``AutoModelForCausalLM.from_pretrained(...,
trust_remote_code=True)`` path: the transformers-5 loading repairs, the exact label mask, the
refusal of the 2025 interface, and seed 004's preset end to end."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import compose_config, run_cli
from tests.moondream_standin import write_standin
from tests.vqa_helpers import BACKGROUND_QUESTION, COLOUR_QUESTION, COLOURS, write_split
from vlmexp.errors import ConfigError
from vlmexp.hardware import Placement
from vlmexp.messages import ChatRequest, ImagePart, TextPart, chat
from vlmexp.models.adapters.moondream import MoondreamAdapter, embed_batch
from vlmexp.models.remote_code import remote_class, skeleton

CPU = Placement("cpu", "float32", "sdpa", None)
TEXTS = [f"\n\nQuestion: {q}\n\nAnswer: {a}<|endoftext|>" for q in (COLOUR_QUESTION, BACKGROUND_QUESTION)
         for a in [*COLOURS, "light", "dark"]] * 4


def model_cfg(path) -> OmegaConf:
    return OmegaConf.create({"name": "moondream2", "hf_id": str(path), "revision": "2024-08-26",
                             "trust_remote_code": True})


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return write_standin(tmp_path_factory.mktemp("moondream") / "moondream2", TEXTS)


def request(colour=(220, 30, 30), question=COLOUR_QUESTION) -> ChatRequest:
    return ChatRequest(chat("You are helpful.", ImagePart(Image.new("RGB", (56, 40), colour)), TextPart(question)))


def test_the_standin_breaks_under_plain_transformers_5_loading_as_moondream_does(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = write_standin(tmp_path / "plain", TEXTS)  # a folder of its own: its class is not repaired yet
    with pytest.raises(AttributeError, match="all_tied_weights_keys"):
        AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    cls, _ = remote_class(AutoModelForCausalLM, str(folder), model_cfg(folder))  # the post_init repair only
    loaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    computed = skeleton(cls, loaded.config).vision_encoder.pos
    assert not torch.equal(loaded.vision_encoder.pos, computed)  # the buffer came back uninitialised


def test_the_adapter_loads_it_whole(standin):
    from safetensors.torch import load_file

    adapter = MoondreamAdapter()
    model = adapter.load_model(str(standin), model_cfg(standin), CPU)
    cls = type(model)
    assert torch.equal(model.vision_encoder.pos, skeleton(cls, model.config).vision_encoder.pos)
    saved = load_file(standin / "model.safetensors")
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in saved.items())
    parts = adapter.parts(model)
    assert (parts.vision[0], parts.projector[0], parts.language[0]) == (
        "vision_encoder.encoder", "vision_encoder.projection", "text_model")


def test_labels_are_the_answer_tokens_and_eos_only(standin):
    adapter = MoondreamAdapter()
    tokenizer = adapter.load_processor(str(standin), model_cfg(standin))
    model = adapter.load_model(str(standin), model_cfg(standin), CPU)
    features = adapter.supervised_features(tokenizer, request(), "red")
    question = tokenizer(f"\n\nQuestion: {COLOUR_QUESTION}\n\nAnswer:", add_special_tokens=False)["input_ids"]
    answer = tokenizer(" red<|endoftext|>", add_special_tokens=False)["input_ids"]
    assert answer[-1] == tokenizer.eos_token_id
    assert features["input_ids"].tolist() == [question + answer]
    assert features["labels"].tolist() == [[-100] * len(question) + answer]
    short = adapter.supervised_features(tokenizer, request(question="Colour?"), "dark")
    batch = adapter.collate([features, None, short], tokenizer.pad_token_id)  # None: an unreadable image
    embeds, mask, labels = embed_batch(model, batch, "right")
    image_tokens = model.vision_encoder([Image.new("RGB", (8, 8))]).shape[1]
    assert image_tokens == 4
    first = [-100] * (1 + image_tokens + len(question)) + answer  # BOS, the image, the question: not learnt
    assert labels[0].tolist() == first and mask[0].tolist() == [1] * len(first)
    second = [-100] * (1 + image_tokens) + short["labels"][0].tolist()
    assert labels[1].tolist() == second + [-100] * (len(first) - len(second))
    assert mask[1].tolist() == [1] * len(second) + [0] * (len(first) - len(second))
    assert embeds.shape == (2, len(first), model.config.text_config["hidden_size"])


def test_generation_matches_one_request_at_a_time(standin):
    adapter = MoondreamAdapter()
    tokenizer = adapter.load_processor(str(standin), model_cfg(standin))
    model = adapter.load_model(str(standin), model_cfg(standin), CPU)
    requests = [request((220, 30, 30)), request((30, 60, 230), BACKGROUND_QUESTION)]

    def answers(batch):
        inputs = adapter.encode(tokenizer, batch)
        out = adapter.generate(model, inputs, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    assert answers(requests) == answers(requests[:1]) + answers(requests[1:])


def test_the_2025_interface_is_refused_before_its_weights_load(tmp_path):
    folder = write_standin(tmp_path / "hf_moondream", TEXTS, interface="hf_moondream")
    (folder / "model.safetensors").write_bytes(b"not weights")  # reading them would fail differently
    with pytest.raises(ConfigError) as err:
        MoondreamAdapter().load_model(str(folder), model_cfg(folder), CPU)
    assert str(err.value) == (f"model=moondream2: 2024-08-26 of '{folder}' has the HfMoondream interface (no "
                              "vision_encoder / text_model), which this adapter does not drive; pin "
                              "model.revision=2024-08-26")


def test_the_preset_has_seed_004_settings():
    cfg = compose_config(["+experiment=vqa_moondream_crosswalks"])
    train = cfg.train
    assert (cfg.task.name, cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code) == (
        "vqa", "moondream2", "2024-08-26", True)
    assert (train.epochs, train.lr, train.batch_size, train.max_grad_norm) == (5, 3e-5, 2, 1.0)
    assert train.freeze_vision and train.freeze_projector and not train.freeze_llm and not train.lora.enabled
    assert cfg.model.adapter._target_ == "vlmexp.models.adapters.moondream.MoondreamAdapter"


@pytest.mark.slow
def test_seed_004_fine_tunes_the_text_model_and_answers_held_out_questions(tmp_path, standin):
    import mlflow
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    train, val = write_split(tmp_path, "train", 32, seed=1), write_split(tmp_path, "val", 8, seed=2)
    test = write_split(tmp_path, "test", 8, seed=3)
    result = run_cli(["+experiment=vqa_moondream_crosswalks", f"model.hf_id={standin}", "hardware=cpu",
                      f"data.train_file={train}", f"data.val_file={val}", f"data.test_file={test}",
                      "train.lr=3e-3", "train.epochs=12", "train.batch_size=4", "train.patience=12",
                      "task.max_new_tokens=8", f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [found] = mlflow.search_runs(experiment_names=["vqa"], output_format="list")
    client, metrics = mlflow.MlflowClient(), found.data.metrics
    losses = [m.value for m in client.get_metric_history(found.info.run_id, "train/loss")]
    val_losses = [m.value for m in client.get_metric_history(found.info.run_id, "val/loss")]
    assert len(val_losses) == 12 and min(val_losses) < val_losses[0] / 2 and losses[-1] < losses[0] / 2
    assert metrics["test/exact_match"] >= 0.9 and metrics["test/test_exact_match"] >= 0.9, metrics
    assert len(client.get_metric_history(found.info.run_id, "val/exact_match")) == 12

    original = load_file(standin / "model.safetensors")
    vision = sum(t.numel() for n, t in original.items() if n.startswith("vision_encoder."))
    total = sum(t.numel() for t in original.values())
    params = found.data.params
    assert (params["model.trainable_params"], params["model.total_params"]) == (str(total - vision), str(total))
    assert f"trainable parameters: {total - vision:,} of {total:,}" in result.stdout + result.stderr

    [checkpoint] = (tmp_path / "cache" / "runs" / "vqa").glob("*/checkpoint")
    saved = load_file(f"{checkpoint}/model.safetensors")
    assert all(torch.equal(saved[n], t) for n, t in original.items() if n.startswith("vision_encoder."))
    assert any(not torch.equal(saved[n], t) for n, t in original.items() if n.startswith("text_model."))
    assert {"moondream.py", "config.json", "tokenizer.json"} <= {p.name for p in checkpoint.iterdir()}
    assert json.loads((checkpoint / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == (
        "moondream.Moondream")
    remote_class(AutoModelForCausalLM, str(checkpoint), model_cfg(checkpoint))  # the post_init repair
    reloaded = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True).state_dict()
    assert all(torch.equal(reloaded[n], t) for n, t in saved.items())


def test_engine_ollama_gives_the_records_engine_hf_gives(standin, tmp_path):
    """The stand-in behind a fake Ollama server (tag ``moondream``, as ``model.ollama_tag`` says) and
    in process: the same records, sample by sample."""
    from tests.fake_servers import FakeServer, HFResponder
    from vlmexp.engines.hf import HFEngine
    from vlmexp.runner import run

    adapter = MoondreamAdapter()
    served = HFEngine(batch_size=1, model=adapter.load_model(str(standin), model_cfg(standin), CPU),
                      processor=adapter.load_processor(str(standin), model_cfg(standin)), adapter=adapter)
    test = write_split(tmp_path, "test", 3, seed=4)
    common = ["task=vqa", "model=moondream2", f"model.hf_id={standin}", "mode=eval", f"data.test_file={test}",
              "logger=none", "task.max_new_tokens=6", "hardware=cpu", f"paths.cache_dir={tmp_path / 'cache'}"]
    records = {}
    with FakeServer(HFResponder(served), models=["moondream"]) as server:
        for name, engine in {"hf": ["engine=hf"], "ollama": ["engine=ollama", f"engine.host={server.ollama_host}"]
                             }.items():
            run(compose_config(common + engine), output_dir=tmp_path / name)
            lines = (tmp_path / name / "predictions.jsonl").read_text().splitlines()
            records[name] = [{k: v for k, v in json.loads(line).items() if k not in ("latency_s", "wall_s")}
                             for line in lines]
    assert [c["body"]["model"] for c in server.chats] == ["moondream"] * 6
    assert len(records["hf"]) == 6 and records["ollama"] == records["hf"]


def test_lora_on_the_text_model_trains_adapters_only(standin, tmp_path):
    from safetensors.torch import load_file

    from vlmexp.runner import run

    train, val = write_split(tmp_path, "train", 4, seed=1), write_split(tmp_path, "val", 2, seed=2)
    metrics = run(compose_config([
        "+experiment=vqa_moondream_crosswalks", f"model.hf_id={standin}", "hardware=cpu", "logger=none",
        f"data.train_file={train}", f"data.val_file={val}", "train.lr=3e-3", "train.epochs=2",
        "train.lora.enabled=true", "task.max_new_tokens=4", f"paths.cache_dir={tmp_path / 'cache'}"]),
        output_dir=tmp_path / "out")
    [checkpoint] = (tmp_path / "cache" / "runs" / "vqa").glob("*/checkpoint")
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    assert adapter and all("lora_" in name and ".text_model." in name for name in adapter)
    assert not (checkpoint / "model.safetensors").exists()  # the base weights are not rewritten
    assert metrics["best_epoch"] in (1.0, 2.0) and "exact_match" in metrics


def test_the_training_forward_runs_through_ddp_like_any_model(standin, tmp_path):
    """``model(**batch)`` is Moondream's training forward, so DistributedDataParallel (a real one,
    one process on gloo) wraps it as it wraps any model, and gives the same loss."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from tests.fake_servers import closed_port

    adapter = MoondreamAdapter()
    tokenizer = adapter.load_processor(str(standin), model_cfg(standin))
    model = adapter.load_model(str(standin), model_cfg(standin), CPU, for_training=True)
    batch = adapter.collate([adapter.supervised_features(tokenizer, request(), "red"),
                             adapter.supervised_features(tokenizer, request(question="Colour?"), "dark")],
                            tokenizer.pad_token_id)
    plain = float(adapter.forward(model, batch).loss)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{closed_port()}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(model, find_unused_parameters=True)
        loss = adapter.forward(wrapped, batch).loss
        loss.backward()
    finally:
        dist.destroy_process_group()
    assert float(loss) == pytest.approx(plain, rel=1e-6)
    assert model.text_model.lm_head.weight.grad is not None
