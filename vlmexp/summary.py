"""``summary.md``: one run on one page, so that two runs can be compared by reading two files: the
results with their intervals, the data, and the model and engine as actually used."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hydra.utils import get_class
from omegaconf import OmegaConf

from vlmexp.provenance import COST_KEYS

PATCH_PIXELS = 28 * 28  # one visual token of Qwen2-VL-style models (14 px patches, 2x2 merge)


def prompt_hash(task_cfg) -> tuple[str, list[str]]:
    """sha256 (first 16 hex) over the task's prompt texts (its keys naming a prompt), and those keys."""
    task = OmegaConf.to_container(task_cfg, resolve=True)
    task_cls = get_class(task["_target_"]) if task.get("_target_") else None
    inert = set(task_cls.inert_keys(task)) if hasattr(task_cls, "inert_keys") else set()  # unused prompts
    keys = sorted(k for k in task if "prompt" in k and isinstance(task[k], str) and k not in inert)
    blob = json.dumps({k: task[k] for k in keys}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16], keys


def answer_settings(cfg) -> dict:
    """The engine's keys that shape answers (sampling, token caps, context), not how it runs
    (its ``execution_keys``: concurrency, timeouts, retries), and the task's answer cap."""
    engine = OmegaConf.to_container(cfg.engine, resolve=True)
    execution = set(get_class(engine["_target_"]).execution_keys)
    settings = {k: v for k, v in engine.items() if k != "_target_" and k not in execution and k not in COST_KEYS}
    if cfg.task.get("max_new_tokens") is not None:
        settings["task.max_new_tokens"] = cfg.task.max_new_tokens
    return settings


def format_value(metrics: dict, key: str, digits: int = 4) -> str:
    """``0.8300 [0.7600, 0.8900]`` where the metric has a confidence interval, else the value."""
    value = metrics[key]
    if not isinstance(value, float):
        return str(value)
    text = f"{value:.{digits}f}"
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    if low is not None and high is not None:
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def results_rows(metrics: dict, keys: list[str]) -> list[tuple[str, str]]:
    shown = [k for k in keys if k in metrics]
    shown += sorted(k[:-len("_ci_low")] for k in metrics if k.endswith("_ci_low") and k[:-len("_ci_low")] not in shown
                    and k[:-len("_ci_low")] in metrics)
    figures = [k for k in ("eval_wall_s", "throughput_samples_per_s", "prompt_tokens_total",
                           "completion_tokens_total", "truncated_answers", "engine_errors") if k in metrics]
    return [(k, format_value(metrics, k)) for k in shown + [f for f in figures if f not in shown]]


def _by_source(metrics: dict) -> list[str]:
    """A table of the ``by_source/<source>/<metric>`` metrics: one row per source."""
    table: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith("by_source/"):
            _, source, name = key.split("/", 2)
            table.setdefault(source, {})[name] = value
    if not table:
        return []
    names = list(dict.fromkeys(n for row in table.values() for n in row))
    lines = ["### By source", "", "| source | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {source} | " + " | ".join(f"{row[n]:.4f}" if n in row else "-" for n in names) + " |"
              for source, row in table.items()]
    return lines + [""]


def _prices(cfg) -> list[str]:
    set_ = {k: cfg.engine.get(k) for k in COST_KEYS if cfg.engine.get(k) is not None}
    return ["- prices: " + ", ".join(f"{k}={v}" for k, v in set_.items())] if set_ else []


def _hardware(ctx) -> str:
    """Where the model ran in this process (resolved), or the server's side for a remote engine."""
    if not get_class(ctx.cfg.engine._target_).trains_in_process:
        return "served outside this process (by the engine's server)"
    p = ctx.placement
    return f"{p.device}, {p.dtype}, attention {p.attn_implementation}" + (
        f", {p.quantization}-bit" if p.quantization else "")


def summary_markdown(ctx, task, splits, metrics: dict) -> str:
    cfg, tags = ctx.cfg, ctx.tags
    model = cfg.model
    lines = [f"# {cfg.task.name} / {model.name} / {cfg.engine._target_.rsplit('.', 1)[-1]} ({ctx.mode})", ""]
    rows = results_rows(metrics, task.summary_keys())
    if rows:
        confidence = cfg.eval.confidence
        lines += ["## Results", "", f"Intervals: {confidence:.0%} bootstrap, {cfg.eval.bootstrap} resamples, "
                  f"seed {cfg.seed}" + (" (off)" if not cfg.eval.bootstrap else "") + ".", "",
                  "| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    lines += _by_source(metrics)
    counts = {name: len(split) for name, split in (("train", splits.train), ("val", splits.val),
                                                   ("test", splits.test)) if split is not None}
    skipped = {k: v for k, v in metrics.items() if k.startswith("skipped")}
    skipped.update({k: v for k, v in (splits.skipped or {}).items() if k not in skipped})
    data = cfg.data
    lines += ["## Data", "",
              f"- dataset fingerprint: `{tags.get('vlmexp.dataset_fingerprint')}` (samples, labels, file sizes)",
              f"- content fingerprint: `{tags.get('vlmexp.data_fingerprint')}` (file contents)",
              f"- root: `{data.root}`, format: `{data.get('format')}`, limit: {data.limit}, "
              f"frame_stride: {data.frame_stride}",
              "- samples: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "none"),
              "- skipped: " + (", ".join(f"{k} {int(v)}" for k, v in sorted(skipped.items())) or "none"), ""]
    identity = {k[len("vlmexp.model_identity."):]: v for k, v in tags.items() if k.startswith("vlmexp.model_identity.")}
    digest, prompt_keys = prompt_hash(cfg.task)
    source = model.hf_id or model.get("ollama_tag") or ("local builder" if model.get("local_builder") else "-")
    lines += ["## Model and engine", "",
              f"- model: `{model.name}` ({source}), revision: `{model.revision or 'default'}`, dtype: {model.dtype}",
              "- as served: " + (", ".join(f"{k} `{v}`" for k, v in sorted(identity.items())) or "-"),
              f"- pixel budget: min_pixels {model.min_pixels} ({model.min_pixels // PATCH_PIXELS} visual tokens), "
              f"max_pixels {model.max_pixels} ({model.max_pixels // PATCH_PIXELS} visual tokens)",
              f"- prompt hash: `{digest}` (sha256 of task.{', task.'.join(prompt_keys)})" if prompt_keys else
              "- prompt hash: - (the task has no prompt keys)",
              f"- engine: `{cfg.engine._target_}`",
              "- answer settings: " + ", ".join(f"{k}={v}" for k, v in answer_settings(cfg).items()),
              *_prices(cfg),
              f"- hardware: {_hardware(ctx)}", "",
              "## Provenance", "",
              f"- config fingerprint: `{ctx.fingerprint}`, git commit: `{tags.get('vlmexp.git_commit')}`",
              f"- MLflow run: `{ctx.tracker.run_id or '-'}`, work dir: `{ctx.work_dir}`", ""]
    return "\n".join(lines)


def write_summary(ctx, task, splits, metrics: dict) -> Path:
    path = ctx.output_dir / "summary.md"
    path.write_text(summary_markdown(ctx, task, splits, metrics), encoding="utf-8")
    return path
