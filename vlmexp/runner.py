"""The generic runner: validate, seed, open the tracking run, train and/or evaluate via plugins."""

from __future__ import annotations

import inspect
import logging
import random
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from vlmexp import distributed
from vlmexp.atomic import write_text_atomic
from vlmexp.config.validate import validate
from vlmexp.content import HashCache, data_fingerprint
from vlmexp.errors import VlmexpError
from vlmexp.evaluation.bootstrap import confidence_intervals
from vlmexp.evaluation.shards import evaluate_shared
from vlmexp.evaluation.store import PredictionStore
from vlmexp.evaluation.usage import cost_metrics, usage_metrics
from vlmexp.paths import expand
from vlmexp.provenance import COST_KEYS, config_fingerprint, dataset_fingerprint, git_commit, package_versions
from vlmexp.runlock import RunLock
from vlmexp.startup import check_free_space, check_writable
from vlmexp.summary import format_value
from vlmexp.tracking.base import Tracker
from vlmexp.tracking.datasets import PREDICTIONS_TABLE, log_splits, prediction_table
from vlmexp.tracking.names import find, logged, logged_name
from vlmexp.tracking.params import readable_params
from vlmexp.tracking.run_names import run_label
from vlmexp.tracking.sweep_summary import JOB_TAG
from vlmexp.workdir import prepare_work_dir, run_key

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What plugins get from the runner: the config plus the run's folders and tracker, and the one
    factory every engine of the run is built by."""

    cfg: DictConfig
    output_dir: Path  # this job's Hydra run dir (human-facing files)
    work_dir: Path  # keyed by config, data and model: predictions and checkpoints, found again on rerun
    tracker: Tracker
    fingerprint: str
    checkpoint: str | None = None
    metrics: dict = field(default_factory=dict)
    model_identity: dict = field(default_factory=dict)  # the model as served, part of work_dir's key
    tags: dict = field(default_factory=dict)  # the tags set on the tracking run (summary.md reads them)
    label: str = ""  # the run's name: task, model, engine and what the job overrides (plot titles)

    @property
    def mode(self) -> str:
        mode = self.cfg.mode
        return mode.value if hasattr(mode, "value") else str(mode)

    @cached_property
    def placement(self):
        from vlmexp.hardware import resolve_placement

        return resolve_placement(self.cfg.hardware, self.cfg.model)

    def build_engine(self, node: DictConfig | None = None, **loaded):
        """The engine ``node`` names (default: ``cfg.engine``), given this run when its constructor
        takes one. ``loaded`` (a fine-tuned ``model`` and ``processor``, a classifier, ...) goes only to
        engines that hold a model in this process; a remote engine serves its own model."""
        node = self.cfg.engine if node is None else node
        if any(k in node for k in COST_KEYS):  # prices are the runner's (cost metrics), not the engine's
            node = OmegaConf.create({k: v for k, v in OmegaConf.to_container(node).items() if k not in COST_KEYS})
        cls = get_class(node._target_)
        kwargs = dict(loaded) if cls.trains_in_process else {}
        params = inspect.signature(cls.__init__).parameters
        if "run" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            kwargs["run"] = self
        return build(node, partial=True, **kwargs)


def build(node, *, partial: bool = False, **kwargs):
    """``hydra.utils.instantiate`` that lets a plugin constructor's user-facing error through as is
    (Hydra wraps constructor errors in an InstantiationException with the whole call in its text)."""
    from hydra.errors import InstantiationException

    try:
        if partial:
            return instantiate(node, _partial_=True)(**kwargs)
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, VlmexpError):
            raise exc.__cause__ from None
        raise


def seed_everything(seed: int, torch: bool = True) -> None:
    """Seed Python's and numpy's generators, and with ``torch`` torch's (through accelerate)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    if not torch:
        return
    try:
        from accelerate.utils import set_seed

        set_seed(seed)
    except ImportError:  # pragma: no cover - accelerate is a dependency
        pass


def run(cfg: DictConfig, output_dir: Path | None = None, overrides: list[str] | None = None,
        sweep: str | None = None) -> dict[str, float]:
    """Run one job of the composed config; returns the final metrics.

    Everything that can stop a run (config, data, cache dir, disk space, an engine's server and
    model, another process on the same work dir) is checked before the tracking run opens; the
    tracking store itself is checked first, before any model is built."""
    validate(cfg)
    mode = cfg.mode.value if hasattr(cfg.mode, "value") else str(cfg.mode)
    distributed.init(cfg.hardware.device)
    if cfg.hardware.multi_gpu and distributed.world_size() == 1:
        log.warning("hardware=multi_gpu in a single process: launch with `accelerate launch -m vlmexp ...` (or "
                    "torchrun) to train and evaluate on every GPU")
    cache_dir = expand(cfg.paths.cache_dir)
    check_writable(cache_dir)
    fingerprint = config_fingerprint(cfg, mode)
    task = build(cfg.task, _recursive_=False)
    # Several processes (accelerate launch, torchrun): only the main one opens a tracking run and
    # writes the run's files; the others train and evaluate their share of the data.
    tracker = build(cfg.logger) if distributed.is_main() else Tracker()
    tracker.check()  # an unreachable tracking server stops the run before any model is built
    runs_dir = cache_dir / "runs" / cfg.task.name
    ctx = RunContext(cfg, Path(output_dir) if output_dir else runs_dir, runs_dir, tracker, fingerprint)
    engine_cls = get_class(cfg.engine._target_)
    # torch only where this process runs a model: importing it costs a remote-engine run seconds
    seed_everything(cfg.seed, torch="train" in mode or engine_cls.trains_in_process)
    engine = None
    try:
        with distributed.main_first():  # data generated, models built and files hashed once
            splits = task.load_splits(ctx)  # data errors surface before any model is built
            if "train" in mode or engine_cls.trains_in_process:
                ctx.placement  # noqa: B018 - device/precision errors surface before the tracking run opens
            # An engine that holds no model here is built now: a server that is down or lacks the model
            # stops the run before anything is logged, and the model it serves keys the cache.
            engine = task.evaluation_engine(ctx) if mode == "eval" and not engine_cls.trains_in_process else None
            identity = engine.model_identity() if engine is not None else engine_cls.identify(ctx)
            samples = [s for split in (splits.train, splits.val, splits.test) for s in split or []]
            data = data_fingerprint(cfg.data, samples, HashCache(cache_dir / "content_hashes.json"))
        work_dir = runs_dir / run_key(fingerprint, data, identity)
        lock = RunLock(work_dir).acquire() if distributed.is_main() else None
        try:
            inputs = {"config_fingerprint": fingerprint, "data_fingerprint": data, "model_identity": identity}
            with distributed.main_first():
                if distributed.is_main():
                    prepare_work_dir(work_dir, inputs, resume=cfg.resume)
                    if "train" in mode:
                        check_free_space(work_dir, cfg.paths.min_free_gb)
            ctx.work_dir, ctx.model_identity = work_dir, identity
            ctx.output_dir = Path(output_dir or work_dir / "output")
            if distributed.is_main():
                ctx.output_dir.mkdir(parents=True, exist_ok=True)
            return _tracked(ctx, task, splits, mode, engine, inputs, overrides, sweep)
        finally:
            if lock is not None:
                lock.release()
    except BaseException:
        if engine is not None:
            engine.close()  # evaluation closes it too; closing twice is harmless
        raise


def _tracked(ctx: RunContext, task, splits, mode: str, engine, inputs: dict, overrides, sweep) -> dict[str, float]:
    tracker, work_dir = ctx.tracker, ctx.work_dir
    run_id_file = work_dir / "mlflow_run_id"
    previous = run_id_file.read_text().strip() if run_id_file.is_file() else None
    ctx.label = run_label(ctx.cfg, overrides, sweep)
    run_id = tracker.start(ctx.label, resume_run_id=previous, sweep=sweep, state_dir=work_dir)
    if run_id:
        write_text_atomic(run_id_file, run_id)
    if sweep:  # the job's folder in the sweep (its number): the sweep's summary lists the jobs in order
        tracker.set_tags({JOB_TAG: ctx.output_dir.name})
    try:
        if distributed.is_main():
            _log_run_inputs(ctx, task, splits, overrides, inputs)
        metrics = _execute(ctx, task, splits, mode, engine)
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    if distributed.is_main():
        where = tracker.where()
        if where:
            print(where)
    return metrics


def main_metric(cfg: DictConfig, metrics: dict[str, float], task=None) -> str | None:
    """The key of ``metrics`` a sweep ranks this run by: ``sweep.metric`` (a short, logged or older name:
    ``f1``, ``test/f1``), else the first of the task's table in ``metrics``."""
    if cfg.sweep.metric:
        return find(metrics, cfg.sweep.metric) or cfg.sweep.metric
    task = task if task is not None else build(cfg.task, _recursive_=False)
    return next((k for k in task.summary_keys() if k in metrics), None)


def _log_run_inputs(ctx: RunContext, task, splits, overrides: list[str] | None, inputs: dict) -> None:
    cfg, tracker = ctx.cfg, ctx.tracker
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    tracker.log_params(readable_params(resolved, _hydra_choices(), tuple(task.inert_keys(resolved["task"]))))
    tracker.set_experiment_description(cfg.task.get("description") or "")
    log_splits(tracker, cfg, task, splits, inputs["data_fingerprint"])
    tags = {"vlmexp.overrides": " ".join(overrides or []),
            "vlmexp.git_commit": git_commit(), "vlmexp.config_fingerprint": ctx.fingerprint,
            "vlmexp.dataset_fingerprint": dataset_fingerprint(
                {"train": splits.train, "val": splits.val, "test": splits.test}),
            "vlmexp.data_fingerprint": inputs["data_fingerprint"], "vlmexp.work_dir": str(ctx.work_dir),
            "vlmexp.mode": ctx.mode, "vlmexp.task": cfg.task.name, "vlmexp.model": cfg.model.name,
            "vlmexp.task_class": cfg.task._target_, "vlmexp.engine_class": cfg.engine._target_}
    tags.update({f"vlmexp.model_identity.{k}": v for k, v in inputs["model_identity"].items()})
    presets = [o.split("=", 1)[1] for o in overrides or [] if o.lstrip("+").startswith("experiment=")]
    if presets:
        tags["vlmexp.preset"] = presets[-1]
    tags.update({f"version.{k}": v for k, v in package_versions().items()})
    tracker.set_tags(tags)
    ctx.tags.update(tags)
    config_file = ctx.output_dir / "resolved_config.yaml"
    config_file.write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    # beside the checkpoint too, so vlmexp.load_vlm(<work dir>/checkpoint) knows the model family and prompts
    write_text_atomic(ctx.work_dir / "resolved_config.yaml", config_file.read_text())
    overrides_file = ctx.output_dir / "overrides.yaml"
    overrides_file.write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides or []))))
    tracker.log_artifact(config_file)
    tracker.log_artifact(overrides_file)
    if splits.skipped:
        tracker.log_metrics(logged({k: float(v) for k, v in splits.skipped.items()}))


def _hydra_choices() -> dict[str, str | None]:
    """The config group choices of a run started by Hydra's entry point (none for a composed config)."""
    from hydra.core.hydra_config import HydraConfig

    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def _execute(ctx: RunContext, task, splits, mode: str, engine=None) -> dict[str, float]:
    """Train and/or evaluate. The skip counts come from what was loaded (``splits.skipped``) and from
    what could not be read, in training (``TrainResult.unreadable``) and in evaluation (``skipped``
    records), so each task's ``compute_metrics`` depends on its records alone."""
    metrics: dict[str, float] = {k: float(v) for k, v in (splits.skipped or {}).items()}
    unreadable: set[str] = set()
    if "train" in mode:
        trainer = build(task.trainer)
        result = trainer.fit(ctx, task, splits)
        ctx.checkpoint = str(result.checkpoint_dir)
        unreadable = set(result.unreadable)
        if distributed.is_main():
            _log_training_outputs(ctx, result)
        if mode == "train_eval":
            engine = task.evaluation_engine(ctx, result)
        metrics["best_epoch"] = float(result.best_epoch)
    if mode != "train":
        if engine is None:
            engine = task.evaluation_engine(ctx)
        metrics.update(_evaluate(ctx, task, engine, splits.test, unreadable))
    if distributed.is_main():
        from vlmexp.summary import write_summary

        _print_table(task, metrics)
        ctx.tracker.log_artifact(write_summary(ctx, task, splits, metrics))
        main = main_metric(ctx.cfg, metrics, task)
        ctx.tracker.set_tags({"vlmexp.main_metric": logged_name(main) if main else ""})
    return metrics


def _log_training_outputs(ctx: RunContext, result) -> None:
    from vlmexp.plots import loss_curve

    plot = loss_curve(result.history["train"], result.history["val"], ctx.output_dir / "loss_curve.png",
                      ctx.label or f"{ctx.cfg.task.name} {ctx.cfg.model.name}")
    ctx.tracker.log_artifact(plot)
    size = sum(f.stat().st_size for f in result.checkpoint_dir.rglob("*") if f.is_file())
    if size <= 200 * 1024 * 1024:
        ctx.tracker.log_artifact(result.checkpoint_dir, "checkpoint")
        if any((result.checkpoint_dir / f).is_file() for f in ("config.json", "adapter_config.json")):
            # a model load_vlm loads (not a classifier head): an MLflow model too, registered when asked
            ctx.tracker.log_model(result.checkpoint_dir, ctx.work_dir / "resolved_config.yaml")
    ctx.tracker.set_tags({"vlmexp.checkpoint_dir": str(result.checkpoint_dir)})


def _evaluate(ctx: RunContext, task, engine, samples, unreadable_in_training: set[str]) -> dict[str, float]:
    """Evaluate the samples; with several processes, each its share (the main process then holds
    every record, and computes and logs the metrics alone: the others return none)."""
    loop = build(task.evaluator)
    began = time.perf_counter()
    try:
        records, reused = evaluate_shared(loop, task, engine, samples, ctx.work_dir / "predictions.jsonl",
                                          desc=f"evaluate {task.name}")
        identity = engine.model_identity()
    finally:
        engine.close()
    if records is None:
        return {}
    elapsed = time.perf_counter() - began
    tags = {"vlmexp.reused_predictions": str(reused)}
    # What only the evaluation revealed (an OpenAI server's system_fingerprint).
    tags.update({f"vlmexp.model_identity.{k}": v for k, v in identity.items() if k not in ctx.model_identity})
    ctx.tracker.set_tags(tags)
    ctx.tags.update(tags)
    metrics = task.compute_metrics(records)
    ev = ctx.cfg.eval
    metrics.update(confidence_intervals(task, records, ev.bootstrap, ctx.cfg.seed, ev.confidence))
    if "skipped_corrupt_images" in metrics:  # distinct samples unreadable in training or in evaluation
        skipped = {r["id"] for r in records if r.get("skipped")}
        metrics["skipped_corrupt_images"] = float(len(skipped | unreadable_in_training))
    metrics.update(engine.run_metrics())
    # over every stored record, not only those this process answered (a resumed or reused run)
    metrics.update(usage_metrics(records, ctx.cfg.task.get("max_new_tokens")))
    metrics.update(cost_metrics(records, {k: ctx.cfg.engine.get(k) for k in COST_KEYS}, task.sample_unit))
    metrics["eval_wall_s"] = elapsed
    ctx.tracker.log_metrics(logged(metrics))
    predictions = ctx.output_dir / "predictions.jsonl"  # one final record per sample, in order
    predictions.unlink(missing_ok=True)
    PredictionStore(predictions).append(records)
    ctx.tracker.log_artifact(predictions)
    ctx.tracker.log_table(prediction_table(task, records), PREDICTIONS_TABLE)
    for path in task.write_artifacts(records, metrics, ctx.output_dir):
        ctx.tracker.log_artifact(path)
    return metrics


def _print_table(task, metrics: dict[str, float]) -> None:
    keys = [k for k in task.summary_keys() if k in metrics] or sorted(metrics)
    if not keys:
        return
    width = max(len(k) for k in keys)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  {'-' * 10}"]
    lines += [f"{k.ljust(width)}  {format_value(metrics, k)}" for k in keys]
    print("\n".join(lines))
