"""Seed 002's robustness and explainability blocks: the perturbed copy and the follow-up question."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from tests.conftest import compose_config
from tests.helpers import ScriptedEngine, image_key
from tests.smoke_fixtures import noise_image, write_answers, write_yolo_set
from vlmexp.data.images import open_image
from vlmexp.data.perturb import perturbation_seed, shake_and_blur, transform_boxes
from vlmexp.evaluation.loop import PredictionLoop
from vlmexp.evaluation.store import PredictionStore
from vlmexp.messages import Generation
from vlmexp.runner import RunContext, run
from vlmexp.tracking.null import NullTracker

NO = '{"has_smoke": false, "bbox": [0, 0, 0, 0]}'
YES = '{"has_smoke": true, "bbox": [0.5, 0.5, 0.4, 0.4]}'
EXPLAIN_PROMPT = "Explain your JSON in 20 words."
EXPLANATION = "A grey plume rises above the ridge in the centre, shaped like smoke, not cloud or haze."


class ExplainingEngine(ScriptedEngine):
    """Answers the explanation follow-up with a fixed sentence, everything else from the script."""

    def generate(self, requests):
        answers = super().generate(requests)
        return [Generation(EXPLANATION, latency_s=0.5) if r.messages[-1].text == EXPLAIN_PROMPT else a
                for r, a in zip(requests, answers)]


# -- the perturbation itself -------------------------------------------------------------------------
def test_shake_and_blur_is_deterministic_per_seed(tmp_path):
    noise_image(tmp_path / "a.png", (120, 90), 0)
    image = open_image(tmp_path / "a.png")
    first, matrix = shake_and_blur(image, 7)
    again, same_matrix = shake_and_blur(image, 7)
    other, _ = shake_and_blur(image, 8)
    assert first.size == image.size
    assert np.array_equal(np.asarray(first), np.asarray(again)) and np.array_equal(matrix, same_matrix)
    assert not np.array_equal(np.asarray(first), np.asarray(other))
    assert not np.array_equal(np.asarray(first), np.asarray(image))
    assert perturbation_seed(0, "a.png") == perturbation_seed(0, "a.png") != perturbation_seed(1, "a.png")
    assert perturbation_seed(0, "a.png") != perturbation_seed(0, "b.png")


def test_motion_blur_softens_the_image(tmp_path):
    import cv2

    noise_image(tmp_path / "a.png", (100, 100), 1)
    image = open_image(tmp_path / "a.png")
    untouched, matrix = shake_and_blur(image, 3, shake=0.0, blur=0.0)
    assert np.array_equal(np.asarray(untouched), np.asarray(image)) and np.allclose(matrix, np.eye(2, 3))
    blurred, _ = shake_and_blur(image, 3, shake=0.0)
    sharpness = [cv2.Laplacian(cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()
                 for img in (image, blurred)]
    assert sharpness[1] < 0.5 * sharpness[0]


def test_true_boxes_follow_the_shake(tmp_path):
    noise_image(tmp_path / "a.png", (200, 160), 2, box=[0.5, 0.5, 0.3, 0.25])
    image = open_image(tmp_path / "a.png")
    shaken, matrix = shake_and_blur(image, 11, shake=0.05, blur=0.0)
    [box] = transform_boxes([[0.5, 0.5, 0.3, 0.25]], matrix, image.size)
    ys, xs = np.nonzero(np.asarray(shaken).min(axis=2) > 200)  # the bright block after the shake
    found = [(xs.min() + xs.max() + 1) / 2 / 200, (ys.min() + ys.max() + 1) / 2 / 160]
    assert abs(matrix[0, 2]) + abs(matrix[1, 2]) > 1  # it did move
    assert found == pytest.approx(box[:2], abs=2 / 160)


def test_transform_boxes_by_hand():
    shift = np.array([[1.0, 0.0, 10.0], [0.0, 1.0, -5.0]])  # 10 px right, 5 px up on 100 x 100
    assert transform_boxes([[0.5, 0.5, 0.2, 0.2]], shift, (100, 100)) == [pytest.approx([0.6, 0.45, 0.2, 0.2])]
    # x 90..110 is clipped to 90..100
    assert transform_boxes([[0.9, 0.5, 0.2, 0.2]], shift, (100, 100)) == [pytest.approx([0.95, 0.45, 0.1, 0.2])]
    assert transform_boxes([[0.98, 0.5, 0.02, 0.2]], shift, (100, 100)) == []  # pushed out of the frame


# -- robustness and explainability in a run ----------------------------------------------------------
@pytest.fixture
def yolo_set(tmp_path) -> tuple[Path, str, list[Path]]:
    paths = write_yolo_set(tmp_path / "data", [("y1", [0.5, 0.5, 0.4, 0.4]), ("y2", None)])
    keys = [image_key(open_image(p)) for p in paths]
    answers = write_answers(tmp_path / "answers.json", {keys[0]: YES, keys[1]: NO})
    return tmp_path / "data", answers, paths


def _cfg(yolo_set, tmp_path, *extra, target="tests.helpers.ScriptedEngine"):
    root, answers, _ = yolo_set
    return compose_config(["mode=eval", "data.format=yolo", f"data.root={root}", f"paths.cache_dir={tmp_path / 'c'}",
                           "logger=none", f"engine._target_={target}", "~engine.max_new_tokens",
                           "~engine.do_sample", "~engine.temperature", f"+engine.answers={answers}",
                           f"+engine.default='{NO}'", *extra])


def test_robustness_logs_every_metric_again_with_a_suffix(yolo_set, tmp_path):
    # The perturbed frames are not in the script, so they get the default "no smoke" answer.
    metrics = run(_cfg(yolo_set, tmp_path, "task.robustness=true"), output_dir=tmp_path / "out")
    # clean: y1 TP (IoU 1), y2 TN. Single images: no sequence metrics, so the score renormalises over
    # detection 0.5 + latency 0.2: (0.5 * f1 + 0.2 * 1 / (1 + 0.01)) / 0.7
    assert (metrics["f1"], metrics["mean_iou"], metrics["map_iou40"], metrics["fpr_240p"]) == (1.0, 1.0, 1.0, 0.0)
    assert metrics["early_fire_score"] == pytest.approx((0.5 + 0.2 / 1.01) / 0.7)
    # perturbed: y1 FN, y2 TN
    assert (metrics["accuracy_robust"], metrics["recall_robust"], metrics["f1_robust"]) == (0.5, 0.0, 0.0)
    assert (metrics["iou40_hit_rate_robust"], metrics["map_iou40_robust"], metrics["num_samples_robust"]) == (0, 0, 2)
    assert metrics["early_fire_score_robust"] == pytest.approx((0.2 / 1.01) / 0.7)
    run_totals = {"eval_wall_s", "truncated_answers"}  # over the whole evaluation, not per variant
    intervals = {k for k in metrics if k.endswith(("_ci_low", "_ci_high")) and "_robust" not in k}
    clean = {k for k in metrics if k not in run_totals | intervals and "_robust" not in k}
    assert {f"{k}_robust" for k in clean} - {"mean_iou_robust"} <= set(metrics)  # mean_iou: no smoke predicted
    assert {k.replace("_ci_", "_robust_ci_") for k in intervals} <= set(metrics)  # f1_robust_ci_low, ...
    assert not [k for k in metrics if k.startswith(("ttd", "sequences_", "false_alarm"))]
    for name in ("confusion_matrix.png", "confusion_matrix_robust.png", "gallery.png", "gallery_robust.png",
                 "predictions.csv"):
        assert (tmp_path / "out" / name).is_file(), name
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    robust = {r["id"]: r for r in records if r["variant"] == "robust"}
    assert set(robust) == {"robust/y1.png", "robust/y2.png"}
    # the true box moved with the shake, and is still there
    assert robust["robust/y1.png"]["truth"] and robust["robust/y1.png"]["true_boxes"] != [[0.5, 0.5, 0.4, 0.4]]
    assert robust["robust/y1.png"]["true_boxes"][0] == pytest.approx([0.5, 0.5, 0.4, 0.4], abs=0.06)


def test_robust_predictions_resume_after_an_interruption(yolo_set, tmp_path):
    root, answers, paths = yolo_set
    cfg = _cfg(yolo_set, tmp_path, "task.robustness=true")
    task = instantiate(cfg.task, _recursive_=False)
    ctx = RunContext(cfg, tmp_path / "out", tmp_path / "work", NullTracker(), "test")
    samples = task.load_splits(ctx).test
    assert [s.id for s in samples] == ["y1.png", "y2.png", "robust/y1.png", "robust/y2.png"]
    store, loop = PredictionStore(tmp_path / "work" / "predictions.jsonl"), PredictionLoop(batch_size=1)

    with pytest.raises(KeyboardInterrupt):  # Ctrl-C once the clean frames are done
        loop.run(task, ScriptedEngine(answers, default=NO, interrupt_after=2), samples, store)
    assert set(store.load()) == {"y1.png", "y2.png"}

    engine = ScriptedEngine(answers, default=NO)
    records = loop.run(task, engine, samples, store)
    assert [r["id"] for r in records] == [s.id for s in samples]
    assert len(engine.calls) == 2  # only the perturbed copies were asked
    expected = [image_key(shake_and_blur(open_image(p), perturbation_seed(0, p.name))[0]) for p in paths]
    assert [image_key(c.images[0]) for c in engine.calls] == expected


def test_explain_asks_each_smoke_prediction_a_follow_up(yolo_set, tmp_path):
    target = "tests.test_smoke_switches.ExplainingEngine"
    metrics = run(_cfg(yolo_set, tmp_path, "task.explain=true", target=target), output_dir=tmp_path / "out")
    assert metrics["f1"] == 1.0 and metrics["latency_p50_s"] == pytest.approx(0.01)  # explanations are not scored
    records = {json.loads(line)["id"]: json.loads(line)
               for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()}
    assert records["y1.png"]["explanation"] == EXPLANATION
    assert "explanation" not in records["y2.png"]  # no smoke predicted, nothing to explain

    cfg = _cfg(yolo_set, tmp_path, "task.explain=true", target=target)
    task = instantiate(cfg.task, _recursive_=False)
    samples = task.load_splits(RunContext(cfg, tmp_path, tmp_path, NullTracker(), "test")).test
    engine = ExplainingEngine(yolo_set[1], default=NO)
    task.predict(engine, samples)
    first, second, follow_up = engine.calls
    assert [m.role for m in follow_up.messages] == ["system", "user", "assistant", "user"]
    assert follow_up.messages[2].text == YES and follow_up.messages[3].text == EXPLAIN_PROMPT
    assert follow_up.images == first.images and follow_up.response_schema is None


def test_explain_follow_up_runs_through_the_real_hf_engine(tiny_checkpoint, cache_dir, tmp_path):
    from vlmexp.engines.hf import HFEngine

    cfg = compose_config(["mode=eval", "task.explain=true", f"paths.cache_dir={cache_dir}", "hardware=cpu"])
    task = instantiate(cfg.task, _recursive_=False)
    engine = HFEngine(batch_size=2, max_new_tokens=4, run=RunContext(cfg, tmp_path, tmp_path, NullTracker(), "t"))
    noise_image(tmp_path / "a.png", (96, 72), 0, box=[0.5, 0.5, 0.4, 0.4])
    plain = task.request(open_image(tmp_path / "a.png"))
    asked, explained = engine.generate([plain, task.explain_request(plain, YES)])
    assert asked.error is None and explained.error is None
    assert explained.image_sizes == asked.image_sizes  # the same image, sent once per conversation
    # the follow-up's prompt holds the first answer and the question on top of the first prompt
    extra = len(engine.tokenizer(YES + EXPLAIN_PROMPT)["input_ids"])
    assert explained.prompt_tokens >= asked.prompt_tokens + extra
