"""Zero-shot sentiment of sign-language videos (seed 000): Positive or Negative per video."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from hydra.utils import get_class

from vlmexp.data.sentiment import LABELS, SentimentVideo, load_golden_labels
from vlmexp.data.video import SampledVideo, UnreadableVideo, sample_frames
from vlmexp.errors import ConfigError
from vlmexp.evaluation.classification import latency_metrics
from vlmexp.evaluation.usage import usage_fields, wall_seconds
from vlmexp.messages import ChatRequest, ImagePart, TextPart, VideoPart, chat
from vlmexp.tasks.base import Splits, Task, Verdict
from vlmexp.tasks.sentiment_answers import decide_by_score, parse_label

log = logging.getLogger(__name__)

FRAME_MODES = ("center", "frames", "video")
DECISIONS = ("auto", "score", "generate")


def _label_named(name) -> str | None:
    """The label spelt ``name`` in any case, else None."""
    return {label.lower(): label for label in LABELS}.get(str(name).strip().lower())


class SentimentTask(Task):
    """Each video becomes one request (its centre frame, its sampled frames, or a video input);
    the label comes from scoring both labels (``score``) or from parsing a generated answer."""
    main_metric = "weighted_accuracy"
    sample_unit = "videos"

    path_keys = ("root", "labels_file")

    modes = ("eval",)

    def __init__(self, name: str = "sentiment", default_mode: str = "eval", trainer=None, evaluator=None, *,
                 description: str = "",
                 prompt: str, system_prompt: str | None = None, num_frames: int = 8, frame_mode: str = "center",
                 frame_size: int | None = 224, decision: str = "auto", fallback_label: str = "Negative",
                 lexicon: Mapping[str, Sequence[str]] | None = None, max_new_tokens: int = 16):
        super().__init__(name, default_mode, trainer, evaluator, description)
        if frame_mode not in FRAME_MODES:
            raise ConfigError(f"task.frame_mode={frame_mode}: expected one of {', '.join(FRAME_MODES)}")
        if decision not in DECISIONS:
            raise ConfigError(f"task.decision={decision}: expected one of {', '.join(DECISIONS)}")
        if num_frames < 1:
            raise ConfigError(f"task.num_frames={num_frames}: must be >= 1")
        if frame_size is not None and frame_size < 28:
            raise ConfigError(f"task.frame_size={frame_size}: must be >= 28 pixels (or null to keep the decoded size)")
        fallback = _label_named(fallback_label)
        if fallback is None:
            raise ConfigError(f"task.fallback_label={fallback_label}: must be one of the labels ({', '.join(LABELS)})")
        self.lexicon = {}
        for key, words in (lexicon or {}).items():
            label = _label_named(key)
            if label is None:
                raise ConfigError(f"task.lexicon.{key}: not a label (expected {', '.join(LABELS)})")
            self.lexicon[label] = [str(word) for word in words]
        self.prompt = prompt
        self.system_prompt = system_prompt
        self.num_frames = num_frames
        self.frame_mode = frame_mode
        self.frame_size = frame_size
        self.decision = decision
        self.fallback_label = fallback
        self.max_new_tokens = max_new_tokens

    # -- engine capabilities --------------------------------------------------------------------
    def resolve_decision(self, engine) -> str:
        """``auto`` -> ``score`` where the engine can score, else ``generate``. ``engine`` is an engine
        class or instance; a combination it cannot run fails with one line before any model loads."""
        engine_name = getattr(engine, "__name__", type(engine).__name__)
        can_score = bool(getattr(engine, "supports_scoring", False))
        if self.frame_mode == "video" and not getattr(engine, "supports_video", False):
            raise ConfigError(f"task.frame_mode=video: engine {engine_name} takes no video input; "
                              "use task.frame_mode=frames (the sampled frames as images) or center")
        if self.decision == "score" and not can_score:
            raise ConfigError(f"task.decision=score: engine {engine_name} cannot score candidate answers; "
                              "use task.decision=generate (or auto)")
        if self.decision == "auto":
            return "score" if can_score else "generate"
        return self.decision

    # -- data -----------------------------------------------------------------------------------
    def load_splits(self, run) -> Splits:
        decision = self.resolve_decision(get_class(run.cfg.engine._target_))
        log.info("sentiment: decision=%s, frame_mode=%s, %d frames", decision, self.frame_mode, self.num_frames)
        data = run.cfg.data
        return Splits(train=None, val=None, test=load_golden_labels(data.root, data.get("labels_file"), data.limit))

    # -- requests -------------------------------------------------------------------------------
    def request(self, video: SampledVideo) -> ChatRequest:
        size = self.frame_size
        frames = [frame.resize((size, size)) for frame in video.frames] if size else list(video.frames)
        if self.frame_mode == "center":
            parts = [ImagePart(frames[len(frames) // 2])]
        elif self.frame_mode == "frames":
            parts = [ImagePart(frame) for frame in frames]
        else:
            parts = [VideoPart(frames, fps=video.sampled_fps)]
        return ChatRequest(chat(self.system_prompt, *parts, TextPart(self.prompt)), max_new_tokens=self.max_new_tokens)

    # -- evaluation -----------------------------------------------------------------------------
    def predict(self, engine, samples: Sequence[SentimentVideo]) -> list[dict]:
        decision = self.resolve_decision(engine)
        records, requests, kept = [], [], []
        for video in samples:
            base = {"id": video.id, "video_name": video.id, "true_label": video.label, "caption": video.caption}
            try:
                sampled = sample_frames(video.path, self.num_frames)
            except UnreadableVideo as exc:
                log.warning("skipping video %s", exc)
                records.append(dict(base, skipped=str(exc)))
                continue
            requests.append(self.request(sampled))
            kept.append((base, sampled))
        if requests:
            answers = self._score(engine, requests) if decision == "score" else self._generate(engine, requests)
            for (base, sampled), answer in zip(kept, answers):
                records.append(dict(base, **answer, decision=decision, frame_indices=sampled.indices,
                                    total_frames=sampled.total_frames,
                                    correct_prediction=answer["predicted_label"] == base["true_label"]))
        order = {video.id: i for i, video in enumerate(samples)}
        return sorted(records, key=lambda r: order[r["id"]])

    def _score(self, engine, requests: list[ChatRequest]) -> list[dict]:
        began = time.perf_counter()
        rows = engine.score(requests, list(LABELS))
        per_video = (time.perf_counter() - began) / len(requests)
        answers = []
        for logprobs in rows:
            label, confidence = decide_by_score(logprobs, LABELS, self.fallback_label)
            answers.append({"predicted_label": label, "confidence": confidence, "parse_ok": True, "parsed_by": "score",
                            "scores": dict(zip(LABELS, logprobs)), "raw": "", "latency_s": per_video, "error": None})
        return answers

    def _generate(self, engine, requests: list[ChatRequest]) -> list[dict]:
        answers = []
        for gen in engine.generate(requests):
            parsed = parse_label(gen.text, LABELS, self.lexicon) if gen.error is None else None
            label = parsed.label if parsed else None
            answers.append({"predicted_label": label or self.fallback_label, "confidence": None,
                            "parse_ok": label is not None, "parsed_by": parsed.parsed_by if parsed else None,
                            "fallback": label is None, "raw": gen.text, "latency_s": gen.latency_s,
                            "error": gen.error, **usage_fields(gen)})
        return answers

    def compute_metrics(self, records: list[dict]) -> dict[str, float]:
        from vlmexp.tasks.sentiment_report import label_metrics

        evaluated = [r for r in records if not r.get("skipped")]
        metrics = label_metrics([r["true_label"] for r in evaluated], [r["predicted_label"] for r in evaluated])
        parsed = sum(1 for r in evaluated if r["parse_ok"])
        metrics.update({
            "parse_success_rate": parsed / len(evaluated) if evaluated else 0.0,
            "unparsed_answers": float(len(evaluated) - parsed),
            "engine_errors": float(sum(1 for r in evaluated if r.get("error"))),
            "num_samples": float(len(evaluated)),
            "skipped_unreadable_videos": float(len(records) - len(evaluated)),
        })
        latencies = [r["latency_s"] for r in evaluated]
        timing = latency_metrics(latencies, wall_seconds(evaluated))
        if timing:
            metrics.update({"latency_mean_s": sum(latencies) / len(latencies),
                            "latency_p50_s": timing["latency_p50_s"], "latency_p95_s": timing["latency_p95_s"],
                            "throughput_samples_per_s": timing["throughput_samples_per_s"]})
        return metrics

    def verdict(self, record: dict) -> Verdict | None:
        if record.get("skipped"):
            return None
        return Verdict(record["predicted_label"], record["true_label"],
                       record["predicted_label"] == record["true_label"])

    def resamplings(self, records: list[dict]) -> list:
        """weighted_accuracy and f1_weighted, resampled by video."""
        from vlmexp.evaluation.bootstrap import Resampling, label_rates

        evaluated = [r for r in records if not r.get("skipped")]
        truth, pred = [r["true_label"] for r in evaluated], [r["predicted_label"] for r in evaluated]
        return [Resampling([r["id"] for r in evaluated], lambda W, C: label_rates(W, truth, pred))]

    def write_artifacts(self, records: list[dict], metrics: dict[str, float], out_dir: Path) -> list[Path]:
        from vlmexp.plots import confusion_matrix_png
        from vlmexp.tasks.sentiment_report import (
            classification_report_text,
            write_metrics_summary,
            write_results_csv,
            write_rows,
        )

        evaluated = [r for r in records if not r.get("skipped")]
        skipped = [r for r in records if r.get("skipped")]
        unparsed = [r for r in evaluated if not r["parse_ok"]]
        paths = [
            write_results_csv(evaluated, out_dir / "results.csv"),
            write_metrics_summary(metrics, out_dir / "metrics_summary.csv"),
            write_rows(out_dir / "skipped_videos.csv", ["video_name", "true_label", "reason"],
                       [[r["video_name"], r["true_label"], r["skipped"]] for r in skipped]),
            write_rows(out_dir / "unparsed_answers.csv", ["video_name", "true_label", "predicted_label", "answer",
                                                          "error"],
                       [[r["video_name"], r["true_label"], r["predicted_label"], r["raw"], r.get("error") or ""]
                        for r in unparsed]),
        ]
        if evaluated:
            truth = [r["true_label"] for r in evaluated]
            pred = [r["predicted_label"] for r in evaluated]
            report = out_dir / "classification_report.txt"
            report.write_text(classification_report_text(truth, pred, LABELS))
            paths += [report, confusion_matrix_png(truth, pred, LABELS, out_dir / "confusion_matrix.png",
                                                   f"sentiment ({len(evaluated)} videos)")]
        return paths

    def summary_keys(self) -> list[str]:
        return ["accuracy", "balanced_accuracy", "weighted_accuracy", "f1_macro", "f1_weighted", "parse_success_rate",
                "num_samples", "skipped_unreadable_videos", "latency_p50_s"]
