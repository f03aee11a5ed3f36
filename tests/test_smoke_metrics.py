"""Metric building blocks on hand-made records: IoU, AP, time-to-detect, FPR per resolution, the score,
and the artifacts (CSV, gallery)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from vlmexp.evaluation.detection import average_precision, best_iou, localisation_metrics
from vlmexp.evaluation.sequences import sequence_metrics, ttd_score
from vlmexp.evaluation.smoke_artifacts import gallery_png, gallery_selection, predictions_csv
from vlmexp.evaluation.smoke_metrics import (
    SmokeScoring,
    early_fire_score,
    fpr_by_resolution,
    latency_score,
    resolution_bucket,
)


def rec(truth, pred, true_boxes=(), pred_boxes=(), confidence=None, size=(100, 100), **extra):
    return dict(truth=truth, pred=pred, true_boxes=[list(b) for b in true_boxes],
                pred_boxes=[list(b) for b in pred_boxes], confidence=confidence, width=size[0], height=size[1],
                **extra)


def frame(sequence, index, truth, pred, time_s=None):
    return dict(sequence=sequence, frame=index, truth=truth, pred=pred, time_s=time_s)


def test_best_iou_in_pixels():
    # [30,30,70,70] vs [40,30,80,70]: overlap 30 x 40 = 1200, union 1600 + 1600 - 1200 = 2000
    assert best_iou([[0.6, 0.5, 0.4, 0.4]], [[0.5, 0.5, 0.4, 0.4]], (100, 100)) == pytest.approx(0.6)
    # on a 200 x 100 image the same normalised boxes give the same IoU
    assert best_iou([[0.6, 0.5, 0.4, 0.4]], [[0.5, 0.5, 0.4, 0.4]], (200, 100)) == pytest.approx(0.6)
    # the best over several true boxes
    assert best_iou([[0.25, 0.25, 0.5, 0.5]], [[0.75, 0.75, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5]]) == pytest.approx(1.0)
    assert best_iou([], [[0.5, 0.5, 0.1, 0.1]]) == 0.0


def test_localisation_metrics_by_hand():
    records = [
        rec(True, True, [[0.5, 0.5, 0.4, 0.4]], [[0.6, 0.5, 0.4, 0.4]], 0.9),  # IoU 0.6, TP
        rec(False, True, [], [[0.5, 0.5, 0.4, 0.4]], 0.8),  # FP on a clear image
        rec(True, False, [[0.1, 0.1, 0.2, 0.2]], []),  # missed
        rec(False, False),
    ]
    metrics = localisation_metrics(records, 0.4)
    assert metrics["mean_iou"] == pytest.approx(0.6)  # only the image that is smoke and predicted smoke
    assert metrics["iou40_hit_rate"] == pytest.approx(1 / 2)  # 1 of 2 smoke images
    # by score: TP (P 1, R 1/2), FP (P 1/2, R 1/2): recall points 0..0.50 (51 of 101) at precision 1
    assert metrics["map_iou40"] == pytest.approx(51 / 101, abs=1e-6)
    # at IoU 0.7 the 0.6 match is a miss: no hits, AP 0
    strict = localisation_metrics(records, 0.7)
    assert strict["iou40_hit_rate"] == 0.0 and strict["map_iou40"] == 0.0


def test_average_precision_uses_the_confidence_as_score():
    good = rec(True, True, [[0.5, 0.5, 0.4, 0.4]], [[0.5, 0.5, 0.4, 0.4]])
    false_alarm = rec(False, True, [], [[0.5, 0.5, 0.4, 0.4]])
    # the false alarm ranked below the hit: P 1 up to R 1 -> AP 1
    assert average_precision([dict(good, confidence=0.9), dict(false_alarm, confidence=0.2)], 0.4) == pytest.approx(1.0)
    # ranked above it: P 0 at R 0, then 1/2 at R 1 -> envelope 1/2 on all 101 points
    assert average_precision([dict(good, confidence=0.2), dict(false_alarm, confidence=0.9)], 0.4) == pytest.approx(0.5)


def test_no_smoke_images_leave_localisation_out():
    assert localisation_metrics([rec(False, True, [], [[0.5, 0.5, 0.1, 0.1]])]) == {}


def test_time_to_detect_and_false_alarms():
    records = [
        # s1: smoke from position 2 (t=0), first found at position 4 (t=120): 2 frames, 120 s
        *[frame("s1", i, i >= 2, i == 4, time_s=60.0 * (i - 2)) for i in range(5)],
        # s2: found on its first smoke frame, but a false alarm before it; no times
        frame("s2", 0, False, True), frame("s2", 1, True, True),
        # s3: smoke never found; s4: clear, no alarm; s5: clear, alarm
        frame("s3", 0, True, False), frame("s3", 1, True, False),
        frame("s4", 0, False, False), frame("s5", 0, False, False), frame("s5", 1, False, True),
        # single images (no sequence) take no part
        frame(None, 0, True, False),
    ]
    metrics = sequence_metrics(records)
    assert metrics == {"sequences_detected": 2.0, "sequences_missed": 1.0, "false_alarm_sequences": 2.0,
                       "ttd_frames_mean": 1.0,  # (2 + 0) / 2
                       "ttd_seconds_mean": 120.0}  # only s1 has times
    # mean(1/(1+2), 1/(1+0), 0) = 4/9, times (1 - 2 alarms / 5 sequences)
    assert ttd_score(records) == pytest.approx(4 / 9 * 3 / 5)


def test_frames_are_taken_in_frame_order_whatever_the_record_order():
    records = [frame("s", 2, True, True, 60.0), frame("s", 0, False, False, -60.0), frame("s", 1, True, False, 0.0)]
    assert sequence_metrics(records)["ttd_frames_mean"] == 1.0
    assert sequence_metrics(records)["ttd_seconds_mean"] == 60.0


def test_without_sequences_there_are_no_sequence_metrics():
    assert sequence_metrics([frame(None, 0, True, True)]) == {}
    assert ttd_score([frame(None, 0, True, True)]) is None
    assert "ttd_frames_mean" not in sequence_metrics([frame("s", 0, True, False)])


@pytest.mark.parametrize("size, bucket", [((160, 120), 240), ((640, 480), 480), ((854, 480), 480),
                                          ((1280, 720), 720), ((1920, 1080), 1080), ((2560, 1440), 1440),
                                          ((3840, 2160), 2160), ((1080, 1920), 1080), ((7680, 4320), 2160)])
def test_resolution_bucket_is_the_nearest_standard_height_of_the_short_side(size, bucket):
    assert resolution_bucket(*size) == bucket


def test_false_positive_rate_per_resolution_counts_clear_images_only():
    vga, uhd = (640, 480), (3840, 2160)
    records = [rec(False, True, size=vga), rec(False, False, size=vga), rec(False, False, size=vga),
               rec(False, True, size=uhd), rec(True, True, size=(1920, 1080))]
    assert fpr_by_resolution(records) == {"fpr_480p": pytest.approx(1 / 3), "fpr_2160p": 1.0}


def test_early_fire_score_is_a_weighted_mean_of_its_terms():
    weights = {"detection": 0.5, "time_to_detect": 0.3, "latency": 0.2}
    assert latency_score(1.0, 1.0) == 0.5 and latency_score(0.0, 2.0) == 1.0
    assert latency_score(3.0, 1.0) == pytest.approx(0.25)
    terms = {"detection": 0.8, "time_to_detect": 0.5, "latency": 0.25}
    assert early_fire_score(terms, weights) == pytest.approx(0.4 + 0.15 + 0.05)
    # single images: the time-to-detect term drops out, the others are renormalised over 0.7
    assert early_fire_score(dict(terms, time_to_detect=None), weights) == pytest.approx((0.4 + 0.05) / 0.7)
    assert early_fire_score(terms, {"detection": 2.0, "time_to_detect": 0.0, "latency": 0.0}) == pytest.approx(0.8)


def test_scoring_turns_bad_json_into_no_smoke_or_drops_it():
    records = [rec(True, False, [[0.5, 0.5, 0.2, 0.2]], parse_ok=False, latency_s=0.1),
               rec(True, True, [[0.5, 0.5, 0.2, 0.2]], [[0.5, 0.5, 0.2, 0.2]], parse_ok=True, latency_s=0.3),
               {"id": "x", "skipped": "broken file"}]
    negative = SmokeScoring(bad_json="negative").metrics(records)
    assert (negative["recall"], negative["num_samples"], negative["skipped_corrupt_images"]) == (0.5, 2.0, 1.0)
    assert negative["latency_p50_s"] == pytest.approx(0.2)
    assert negative["throughput_samples_per_s"] == pytest.approx(2 / 0.4)
    discard = SmokeScoring(bad_json="discard").metrics(records)
    assert (discard["recall"], discard["parse_success_rate"]) == (1.0, 0.5)


def test_gallery_shows_mistakes_first_taking_each_kind_in_turn():
    records = [dict(id=f"{kind}{i}", truth=truth, pred=pred) for kind, truth, pred in
               (("tn", False, False), ("tp", True, True), ("fn", True, False), ("fp", False, True)) for i in range(3)]
    assert [r["id"] for r in gallery_selection(records, 6)] == ["fn0", "fp0", "tp0", "tn0", "fn1", "fp1"]


def test_gallery_draws_true_and_predicted_boxes(tmp_path):
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    record = rec(True, True, [[0.25, 0.5, 0.3, 0.6]], [[0.75, 0.5, 0.3, 0.6]], id="seq/f.png")
    path = gallery_png([record], lambda r: image, tmp_path / "gallery.png", size=4, columns=1)
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)

    def near(colour):
        return int((np.abs(pixels - colour).sum(axis=1) < 60).sum())

    assert near((0x22, 0xC5, 0x5E)) > 50 and near((0xEF, 0x44, 0x44)) > 50  # green truth, red prediction
    # a missed plume: only the true box is drawn
    missed = gallery_png([dict(record, pred=False)], lambda r: image, tmp_path / "missed.png", size=4, columns=1)
    pixels = np.asarray(Image.open(missed).convert("RGB")).reshape(-1, 3).astype(int)
    assert near((0x22, 0xC5, 0x5E)) > 50 and near((0xEF, 0x44, 0x44)) == 0


def test_predictions_csv_has_one_row_per_sample(tmp_path):
    records = [rec(True, True, [[0.5, 0.5, 0.2, 0.2]], [[0.4, 0.5, 0.2, 0.2]], 0.7, id="s/1.png", variant="robust",
                   sequence="s", frame=1, time_s=60.0, raw='{"has_smoke": true}', parse_ok=True, latency_s=0.25,
                   explanation="Grey plume above the ridge."),
               {"id": "s/2.png", "variant": "clean", "sequence": "s", "frame": 2, "skipped": "s/2.png: truncated"}]
    with predictions_csv(records, tmp_path / "p.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["pred"] == "True" and rows[0]["pred_boxes"] == "[[0.4, 0.5, 0.2, 0.2]]"
    assert (rows[0]["variant"], rows[0]["confidence"], rows[0]["raw"]) == ("robust", "0.7",
                                                                                     '{"has_smoke": true}')
    assert rows[0]["explanation"] == "Grey plume above the ridge."
    assert rows[1]["skipped"] == "s/2.png: truncated" and rows[1]["pred"] == ""
