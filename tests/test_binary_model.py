"""Classifier head on the tiny VLM: pooling, no LM head, staged training, freezing, save and reload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import REPO, compose_config
from vlmexp.data.synthetic_binary import write_binary_split
from vlmexp.models.classifier import VLMClassifier, pool
from vlmexp.models.classifier_spec import HeadConfig, classification_request
from vlmexp.runner import RunContext
from vlmexp.tracking.base import Tracker


class RecordingTracker(Tracker):
    def __init__(self):
        self.metrics: list[tuple[dict, int | None]] = []
        self.params: dict = {}

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))

    def log_params(self, params):
        self.params.update(params)

    def values(self, key: str) -> list[tuple[float, int | None]]:
        return [(m[key], step) for m, step in self.metrics if key in m]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    import numpy as np

    root = tmp_path_factory.mktemp("binary-data")
    rng = np.random.default_rng(1)
    return {split: str(write_binary_split(root, split, rng, n, 64, 64)) for split, n in (("train", 16), ("val", 8))}


def fit(cache_dir, data, folder, *overrides):
    cfg = compose_config(["task=binary", "model=tiny", "hardware=cpu", f"paths.cache_dir={cache_dir}",
                          *(f"data.{split}_file={path}" for split, path in data.items()), *overrides])
    ctx = RunContext(cfg, folder / "out", folder / "work", RecordingTracker(), "test")
    task = instantiate(cfg.task, _recursive_=False)
    splits = task.load_splits(ctx)
    return instantiate(cfg.task.trainer).fit(ctx, task, splits), ctx, splits


@pytest.fixture(scope="module")
def frozen(cache_dir, data, tmp_path_factory):
    """Stage 1 only: the head on the frozen backbone."""
    return fit(cache_dir, data, tmp_path_factory.mktemp("frozen"), "train.epochs=2")


@pytest.fixture(scope="module")
def lora(cache_dir, data, tmp_path_factory):
    """A barely trained head (lr 1e-6), then LoRA at a rate that surely improves on it."""
    return fit(cache_dir, data, tmp_path_factory.mktemp("lora"), "task.head.pooling=last",
               "train.stages=[{backbone: frozen, lr: 1e-6, epochs: 1},"
               "{backbone: lora, lr: 3e-3, epochs: 2, patience: 5, lora: {r: 4, alpha: 8}}]")


@pytest.fixture(scope="module")
def full(cache_dir, data, tmp_path_factory):
    return fit(cache_dir, data, tmp_path_factory.mktemp("full"), "task.trainer.class_weights=[1.0,2.0]",
               "train.stages=[{backbone: full, lr: 1e-3, epochs: 1}]")


def original_backbone(tiny_checkpoint):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, dtype=torch.float32)


def assert_backbone_unchanged(module, tiny_checkpoint) -> None:
    trained = module.backbone.state_dict()
    for name, tensor in original_backbone(tiny_checkpoint).state_dict().items():
        assert torch.equal(trained[name], tensor), name


RELOAD = """
import json, sys
from vlmexp.models.classifier import load_classifier
out = []
for folder, items in json.loads(sys.argv[1]):
    clf = load_classifier(folder, device="cpu")
    out.append([clf.predict(path, text, return_probs=True) for path, text in items])
print(json.dumps(out))
"""


def test_pooling_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                           [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    right_padded = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(hidden, right_padded, "mean").tolist() == [[2.0, 3.0], [7.0, 8.0]]
    assert pool(hidden, right_padded, "last").tolist() == [[3.0, 4.0], [9.0, 10.0]]
    left_padded = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert pool(hidden, left_padded, "last").tolist() == [[100.0, 100.0], [9.0, 10.0]]


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_features_come_from_the_base_model_without_the_lm_head(tiny_checkpoint, pooling, data):
    from vlmexp.data.images import open_image
    from vlmexp.models.classifier import encode
    from vlmexp.models.loading import load_processor

    backbone = original_backbone(tiny_checkpoint).eval()
    processor = load_processor(tiny_checkpoint, compose_config(["model=tiny"]).model)
    module = VLMClassifier(backbone, HeadConfig(hidden_dim=16, pooling=pooling), 2).eval()
    assert module.hidden_size == backbone.config.text_config.hidden_size == 128
    calls = []
    backbone.lm_head.register_forward_hook(lambda *args: calls.append(1))
    lines = Path(data["val"]).read_text().splitlines()[:2]
    requests = [classification_request(open_image(Path(data["val"]).parent / line["image_path"]), line["text"])
                for line in map(json.loads, lines)]
    inputs = encode(processor, requests)
    with torch.no_grad():
        features = module.features(**inputs)
        logits = module(**inputs)
        assert calls == []
        hidden = backbone(**inputs, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(features, pool(hidden, inputs["attention_mask"], pooling))
    assert logits.shape == (2, 2)
    torch.testing.assert_close(logits, module.head(features))


def test_stage_one_freezes_the_backbone(frozen, tiny_checkpoint):
    result, ctx, _ = frozen
    module = result.model.module
    head_params = sum(p.numel() for p in module.head.parameters())
    assert head_params == 128 * 512 + 512 + 512 * 2 + 2
    assert ctx.tracker.params["model.trainable_params"] == head_params
    assert "model.trainable_params.stage2" not in ctx.tracker.params
    assert_backbone_unchanged(module, tiny_checkpoint)
    assert [step for _, step in ctx.tracker.values("val/loss")] == [1, 2]
    assert ctx.tracker.values("val/best_epoch") == [(result.best_epoch, None)]
    folder = result.checkpoint_dir
    assert sorted(p.name for p in folder.iterdir()) == ["head.safetensors", "head_config.json", "training.json"]
    config = json.loads((folder / "head_config.json").read_text())
    assert config["backbone"]["checkpoint"] == tiny_checkpoint and config["backbone"]["name"] == "tiny"
    assert config["backbone_weights"] is None
    assert config["head"] == {"hidden_dim": 512, "dropout": 0.1, "pooling": "mean"}
    assert config["class_names"] == ["0", "1"]


def test_lora_stage_trains_the_adapter_and_saves_it_alone(lora):
    result, ctx, _ = lora
    module = result.model.module
    lora_params = sum(p.numel() for n, p in module.backbone.named_parameters() if "lora_" in n)
    head_params = sum(p.numel() for p in module.head.parameters())
    assert lora_params > 0
    params = ctx.tracker.params
    assert (params["model.trainable_params"], params["model.trainable_params.stage2"]) == (head_params,
                                                                                           head_params + lora_params)
    assert [step for _, step in ctx.tracker.values("val/loss")] == [1, 2, 3]
    assert result.best_epoch > 1
    folder = result.checkpoint_dir
    config = json.loads((folder / "head_config.json").read_text())
    assert (config["backbone_weights"], config["head"]["pooling"]) == ("adapter", "last")
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()
    assert not (folder / "backbone").exists()


def test_full_stage_changes_the_backbone_and_saves_it(full, tiny_checkpoint):
    result, ctx, _ = full
    module = result.model.module
    assert ctx.tracker.params["model.trainable_params"] == sum(p.numel() for p in module.parameters())
    original = original_backbone(tiny_checkpoint).state_dict()
    assert any(not torch.equal(module.backbone.state_dict()[n], t) for n, t in original.items())
    folder = result.checkpoint_dir
    assert json.loads((folder / "head_config.json").read_text())["backbone_weights"] == "backbone"
    assert (folder / "backbone" / "model.safetensors").is_file()


def test_full_stage_that_never_improves_keeps_the_stage_one_weights(cache_dir, tiny_checkpoint, data, tmp_path):
    # A learning rate this high wrecks the backbone: validation loss gets worse, so early stopping must
    # end on the stage-1 epoch, with the backbone exactly as loaded and nothing but the head saved.
    result, ctx, _ = fit(cache_dir, data, tmp_path, "train.stages=[{backbone: frozen, epochs: 1},"
                         "{backbone: full, lr: 5.0, epochs: 3, patience: 1}]")
    val = [loss for loss, _ in ctx.tracker.values("val/loss")]
    assert len(val) == 2 and val[1] > val[0]
    assert result.best_epoch == 1
    assert_backbone_unchanged(result.model.module, tiny_checkpoint)
    assert json.loads((result.checkpoint_dir / "head_config.json").read_text())["backbone_weights"] is None


def test_saved_classifiers_reload_in_a_fresh_process_with_identical_probabilities(frozen, lora, full):
    jobs, expected = [], []
    for result, _, splits in (frozen, lora, full):
        samples = splits.val[:3]
        jobs.append([str(result.checkpoint_dir), [[str(s.path), s.text] for s in samples]])
        expected.append([result.model.predict(str(s.path), s.text, return_probs=True) for s in samples])
    out = subprocess.run([sys.executable, "-c", RELOAD, json.dumps(jobs)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected
    for probs in expected[0]:
        assert abs(sum(probs) - 1.0) < 1e-6


def test_predict_returns_the_class_or_both_probabilities(frozen):
    result, _, splits = frozen
    clf = result.model
    samples = splits.val[:4]
    probs = [clf.predict(s.path, s.text, return_probs=True) for s in samples]
    assert all(len(p) == 2 for p in probs)
    assert [clf.predict(str(s.path), s.text) for s in samples] == [int(p[1] > p[0]) for p in probs]
    from vlmexp.data.images import open_image

    batch = clf.predict_batch([open_image(s.path) for s in samples], [s.text for s in samples],
                              return_probs=True, batch_size=2)
    torch.testing.assert_close(torch.tensor(batch), torch.tensor(probs))


def test_a_finished_training_is_reused(frozen, cache_dir, data):
    result, ctx, splits = frozen
    again, ctx_again, _ = fit(cache_dir, data, ctx.work_dir.parent, "train.epochs=2")
    assert ctx_again.tracker.values("train/loss") == []  # nothing was trained
    assert ctx_again.tracker.values("val/loss") == ctx.tracker.values("val/loss")
    assert again.best_epoch == result.best_epoch
    assert again.history["val"] == [list(point) for point in result.history["val"]]
    sample = splits.val[0]
    assert again.model.predict(sample.path, sample.text, return_probs=True) == result.model.predict(
        sample.path, sample.text, return_probs=True)


def test_engine_serves_the_classifier(frozen):
    from vlmexp.data.images import open_image
    from vlmexp.engines.classifier import ClassifierEngine
    from vlmexp.errors import EngineError

    result, _, splits = frozen
    requests = [classification_request(open_image(s.path), s.text) for s in splits.val[:3]]
    engine = ClassifierEngine(result.model, batch_size=4)  # one batch: the same shapes as log_probs below
    log_probs = result.model.log_probs(requests).tolist()
    assert engine.score(requests, ["1", "0"]) == [[row[1], row[0]] for row in log_probs]
    assert [g.text for g in engine.generate(requests)] == [str(row.index(max(row))) for row in log_probs]
    with pytest.raises(EngineError, match=r"cannot score \['yes'\]"):
        engine.score(requests, ["yes", "0"])
