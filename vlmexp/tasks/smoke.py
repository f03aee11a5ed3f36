"""Early-fire smoke detection (the Early-Fire benchmark): JSON answers with a box per image."""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from vlmexp.data.formats import data_format
from vlmexp.data.images import UnreadableImage, open_image
from vlmexp.data.perturb import perturbation_seed, shake_and_blur, transform_boxes
from vlmexp.data.smoke import SmokeFrame, load_smoke_dataset
from vlmexp.errors import ConfigError
from vlmexp.evaluation.smoke_metrics import SCORE_TERMS, SmokeScoring, per_source_metrics
from vlmexp.evaluation.usage import usage_fields
from vlmexp.messages import ChatRequest, ImagePart, Message, TextPart, chat
from vlmexp.tasks.base import Splits, Task, TrainingExample, Verdict
from vlmexp.tasks.smoke_contract import RESPONSE_SCHEMA, format_smoke_answer, parse_smoke_answer

log = logging.getLogger(__name__)

# (record variant, metric key suffix): the set as given, and its camera-shake + motion-blur copy.
VARIANTS = (("clean", ""), ("robust", "_robust"))


class SmokeTask(Task):
    main_metric = "f1"
    sample_unit = "frames"
    path_keys = ("root", "train_root", "val_root")

    def __init__(self, name: str = "smoke", default_mode: str = "eval", trainer=None, evaluator=None, *,
                 description: str = "", system_prompt: str, user_prompt: str, smoke_classes: Sequence[int] = (0,),
                 bad_json: str = "negative", iou_threshold: float = 0.4, max_new_tokens: int = 64,
                 calibration: bool = True, localisation: bool = True, robustness: bool = False,
                 robustness_seed: int = 0, robustness_shake: float = 0.03, robustness_blur: float = 0.02,
                 explain: bool = False, explain_prompt: str = "Explain your JSON in 20 words.",
                 explain_max_new_tokens: int = 64, score_weights: Mapping[str, float] | None = None,
                 latency_budget_s: float = 1.0, gallery_size: int = 12, alarm: Mapping[str, int] | None = None,
                 context_frames: int = 1,
                 context_prompt: str = "These are the last {n} frames of one camera, oldest first; answer for the "
                                       "last one."):
        super().__init__(name, default_mode, trainer, evaluator, description)
        self.system_prompt, self.user_prompt = system_prompt, user_prompt
        self.context_frames, self.context_prompt = context_frames, context_prompt
        self._sequences: dict[tuple, list[SmokeFrame]] | None = None  # (sequence, variant) -> frames in order
        self.smoke_classes = list(smoke_classes)
        self.max_new_tokens = max_new_tokens
        self.robustness, self.robustness_seed = robustness, robustness_seed
        self.robustness_shake, self.robustness_blur = robustness_shake, robustness_blur
        self.explain, self.explain_prompt, self.explain_max_new_tokens = explain, explain_prompt, explain_max_new_tokens
        self.gallery_size = gallery_size
        weights = dict(score_weights) if score_weights is not None else SmokeScoring().score_weights
        alarm = dict(alarm or {})
        self.alarm_keys = set(alarm) - {"k", "n"}
        self.scoring = SmokeScoring(bad_json, iou_threshold, calibration, localisation, weights, latency_budget_s,
                                    alarm.get("k", 1), alarm.get("n", 1))

    @classmethod
    def inert_keys(cls, task_cfg: dict) -> tuple[str, ...]:
        """One frame per request (the default) asks what a run before ``context_frames`` existed asked."""
        return ("context_frames", "context_prompt") if task_cfg.get("context_frames", 1) == 1 else ()

    def check_settings(self) -> None:
        """Raise ConfigError naming the first bad task key. Called by load_splits, the runner's first call,
        rather than the constructor, whose errors Hydra would wrap in a multi-line traceback."""
        s = self.scoring
        if s.bad_json not in ("negative", "discard"):
            raise ConfigError(f"task.bad_json={s.bad_json}: expected 'negative' or 'discard'")
        if not 0 < s.iou_threshold <= 1:
            raise ConfigError(f"task.iou_threshold={s.iou_threshold}: must be in (0, 1]")
        weights = s.score_weights
        if set(weights) - set(SCORE_TERMS) or any(w < 0 for w in weights.values()) or not sum(weights.values()) > 0:
            raise ConfigError(f"task.score_weights={weights}: expected non-negative weights for "
                              f"{', '.join(SCORE_TERMS)} with a positive sum")
        if self.alarm_keys:
            raise ConfigError(f"task.alarm.{sorted(self.alarm_keys)[0]}: unknown key (known: k, n)")
        if not (isinstance(s.alarm_k, int) and isinstance(s.alarm_n, int) and 1 <= s.alarm_k <= s.alarm_n):
            raise ConfigError(f"task.alarm: k={s.alarm_k} of n={s.alarm_n} frames: expected whole numbers "
                              "1 <= k <= n")
        if not (isinstance(self.context_frames, int) and self.context_frames >= 1):
            raise ConfigError(f"task.context_frames={self.context_frames}: expected a whole number >= 1")
        if s.latency_budget_s <= 0:
            raise ConfigError(f"task.latency_budget_s={s.latency_budget_s}: must be > 0")
        for key in ("robustness_shake", "robustness_blur"):
            if not 0 <= getattr(self, key) < 0.5:
                raise ConfigError(f"task.{key}={getattr(self, key)}: must be in [0, 0.5)")

    # -- data -----------------------------------------------------------------------------------
    def load_splits(self, run) -> Splits:
        self.check_settings()
        data, mode = run.cfg.data, run.mode
        roots = {"train": data.train_root, "val": data.val_root, "test": data.root}
        if data.root is None:
            from vlmexp.data.synthetic_smoke import generate_smoke_dataset

            generated = generate_smoke_dataset(run.cfg.paths.cache_dir, **(data.synthetic or {}))
            roots = {"train": data.train_root or generated["train"], "val": data.val_root or generated["val"],
                     "test": generated["test"]}
            log.info("no data.root given: using the generated smoke dataset in %s", Path(roots["test"]).parent)
        training = "train" in mode
        if training and not roots["train"]:
            raise ConfigError(f"mode={mode} needs data.train_root (a folder in data.format={data.format})")

        layout = data_format(data, "sequences")

        def load(root, limit=None):
            if not root:
                return None
            return load_smoke_dataset(root, layout, self.smoke_classes, data.frame_stride, limit,
                                      data.get("by_source", False))

        test = load(roots["test"], data.limit) if mode != "train" else None
        if test and self.robustness:
            test += [dataclasses.replace(f, id=f"robust/{f.id}", perturb_seed=perturbation_seed(self.robustness_seed,
                                                                                                 f.id)) for f in test]
        self._index_sequences(test or [])
        return Splits(train=load(roots["train"]) if training else None,
                      val=load(roots["val"]) if training else None, test=test)

    def image_as_sent(self, frame_path, perturb_seed: int | None):
        """The image the model is shown (the perturbed copy for the robustness set) and the affine used."""
        image = open_image(frame_path)
        if perturb_seed is None:
            return image, None
        return shake_and_blur(image, perturb_seed, self.robustness_shake, self.robustness_blur)

    # -- requests -------------------------------------------------------------------------------
    def request(self, image, *earlier) -> ChatRequest:
        """The question about ``image``; with ``earlier`` frames (oldest first) they come before it, and
        the prompt says which frame to answer for."""
        text = self.user_prompt
        if earlier:
            text = f"{self.context_prompt.format(n=len(earlier) + 1)} {text}"
        images = [ImagePart(i) for i in (*earlier, image)]
        return ChatRequest(chat(self.system_prompt, *images, TextPart(text)),
                           response_schema=RESPONSE_SCHEMA, max_new_tokens=self.max_new_tokens)

    def _index_sequences(self, frames: Sequence[SmokeFrame]) -> None:
        self._sequences = defaultdict(list)
        for frame in sorted(frames, key=lambda f: f.index):
            if frame.sequence is not None:
                self._sequences[(frame.sequence, frame.perturb_seed is None)].append(frame)

    def context_of(self, frame: SmokeFrame) -> list[SmokeFrame]:
        """The frames sent before ``frame`` (``task.context_frames`` - 1 at most, fewer at a sequence's
        start): the evaluated frames before it in its sequence (after ``data.frame_stride``), oldest first."""
        if self.context_frames <= 1 or frame.sequence is None:
            return []
        group = self._sequences.get((frame.sequence, frame.perturb_seed is None), [])
        return [f for f in group if f.index < frame.index][-(self.context_frames - 1):]

    def _context_images(self, frame: SmokeFrame) -> tuple[list, list[str]]:
        """The earlier frames' images as sent, and their ids; an unreadable one is left out."""
        images, ids = [], []
        for earlier in self.context_of(frame):
            try:
                images.append(self.image_as_sent(earlier.path, earlier.perturb_seed)[0])
                ids.append(earlier.id)
            except UnreadableImage:
                continue
        return images, ids

    def training_examples(self, samples: Sequence[SmokeFrame]) -> list[TrainingExample]:
        def loader(frame: SmokeFrame):
            return lambda: (self.request(open_image(frame.path)), format_smoke_answer(frame.boxes))

        return [TrainingExample(frame.id, loader(frame)) for frame in samples]

    # -- evaluation -----------------------------------------------------------------------------
    def predict(self, engine, samples: Sequence[SmokeFrame]) -> list[dict]:
        if self._sequences is None:  # not loaded through load_splits: the samples are the whole set
            self._index_sequences(samples)
        records, requests, kept = [], [], []
        for frame in samples:
            variant = "clean" if frame.perturb_seed is None else "robust"
            try:
                image, matrix = self.image_as_sent(frame.path, frame.perturb_seed)
            except UnreadableImage as exc:
                if variant == "clean":  # its robust copy is skipped silently: name it once
                    log.warning("skipping unreadable image %s", exc)
                records.append({"id": frame.id, "variant": variant, "sequence": frame.sequence,
                                "frame": frame.index, "skipped": str(exc)})
                continue
            boxes = frame.boxes if matrix is None else transform_boxes(frame.boxes, matrix, image.size)
            earlier, context_ids = self._context_images(frame)
            requests.append(self.request(image, *earlier))
            kept.append((frame, variant, image.size, boxes, context_ids))
        generations = engine.generate(requests) if requests else []
        explain = []
        for (frame, variant, size, boxes, context_ids), request, gen in zip(kept, requests, generations):
            # the current frame is the request's last image
            answer = parse_smoke_answer(gen.text, gen.image_sizes[-1] if gen.image_sizes else size)
            record = {
                "id": frame.id, "variant": variant, "sequence": frame.sequence, "frame": frame.index,
                "time_s": frame.time_s, "path": str(frame.path), "perturb_seed": frame.perturb_seed,
                "width": size[0], "height": size[1], "truth": bool(boxes), "true_boxes": boxes,
                "parse_ok": answer.parse_ok and gen.error is None, "pred": answer.has_smoke,
                "pred_boxes": answer.boxes, "confidence": answer.confidence, "raw": gen.text,
                "latency_s": gen.latency_s, "error": gen.error, **usage_fields(gen),
            }
            if frame.source is not None:
                record["source"] = frame.source
            if self.context_frames > 1:
                record["context"] = context_ids
            records.append(record)
            if self.explain and record["parse_ok"] and record["pred"]:
                explain.append((record, request))
        if explain:
            self._explain(engine, explain)
        order = {frame.id: i for i, frame in enumerate(samples)}
        return sorted(records, key=lambda r: order[r["id"]])

    def explain_request(self, request: ChatRequest, answer: str) -> ChatRequest:
        """The same conversation, the model's answer, then the explanation question (free text)."""
        return ChatRequest(request.messages + [Message("assistant", [TextPart(answer)]),
                                               Message("user", [TextPart(self.explain_prompt)])],
                           max_new_tokens=self.explain_max_new_tokens)

    def _explain(self, engine, pairs: list[tuple[dict, ChatRequest]]) -> None:
        """Seed 002's explainability block: a follow-up turn per smoke prediction, stored, not scored."""
        followups = [self.explain_request(request, record["raw"]) for record, request in pairs]
        for (record, _), gen in zip(pairs, engine.generate(followups)):
            record["explanation"] = gen.text if gen.error is None else None
            if gen.error:
                record["explanation_error"] = gen.error

    def compute_metrics(self, records: list[dict]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for variant, suffix in VARIANTS:
            subset = [r for r in records if r.get("variant", "clean") == variant]
            if subset:
                metrics.update({f"{k}{suffix}": v for k, v in self.scoring.metrics(subset).items()})
                metrics.update(per_source_metrics(self.scoring, subset, suffix))
        return metrics

    def resamplings(self, records: list[dict]) -> list:
        from vlmexp.evaluation.smoke_metrics import smoke_resampling

        out = []
        for variant, suffix in VARIANTS:
            subset = [r for r in records if r.get("variant", "clean") == variant]
            if subset:
                out.append(smoke_resampling(self.scoring, subset, suffix))
        return out

    def write_artifacts(self, records: list[dict], metrics: dict[str, float], out_dir: Path) -> list[Path]:
        from vlmexp.evaluation.smoke_artifacts import gallery_png, predictions_csv
        from vlmexp.plots import confusion_matrix_png

        paths = [predictions_csv(records, out_dir / "predictions.csv")]
        label = {True: "smoke", False: "no smoke"}
        for variant, suffix in VARIANTS:
            scored = self.scoring.scored([r for r in records if r.get("variant", "clean") == variant])
            if not scored:
                continue
            paths.append(confusion_matrix_png(
                [label[r["truth"]] for r in scored], [label[r["pred"]] for r in scored], ["no smoke", "smoke"],
                out_dir / f"confusion_matrix{suffix}.png", f"smoke (image level, {variant})"))
            gallery = gallery_png(scored, self._gallery_image, out_dir / f"gallery{suffix}.png", self.gallery_size)
            if gallery:
                paths.append(gallery)
        return paths

    def verdict(self, record: dict) -> Verdict | None:
        if record.get("skipped") or (not record["parse_ok"] and self.scoring.bad_json == "discard"):
            return None
        pred = bool(record["pred"] and record["parse_ok"])
        label = {True: "smoke", False: "no smoke"}
        return Verdict(label[pred], label[bool(record["truth"])], pred == bool(record["truth"]))

    def record_image(self, record: dict):
        return self._gallery_image(record) if record.get("path") else None

    def _gallery_image(self, record: dict):
        try:
            return self.image_as_sent(record["path"], record.get("perturb_seed"))[0]
        except UnreadableImage:
            return None

    def summary_keys(self) -> list[str]:
        return ["accuracy", "precision", "recall", "f1", "false_positive_rate", "parse_success_rate",
                "mean_iou", "iou40_hit_rate", "map_iou40", "ttd_frames_mean", "ttd_seconds_mean",
                "sequences_detected", "sequences_missed", "false_alarm_sequences", "num_samples",
                "skipped_corrupt_images",
                "latency_p50_s", "early_fire_score", "f1_robust", "early_fire_score_robust"]

