"""``vlmexp report EXPERIMENT``: a leaderboard of an MLflow experiment's evaluation runs.

One row per model x engine x preset (the newest finished run of each), on one dataset fingerprint:
the headline metrics with their bootstrap intervals, median latency and throughput, and a Pareto plot
of the main metric against median latency. Written as Markdown and as a self-contained HTML page
(the plot inlined), logged to MLflow as a report run, and printed as a table.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from vlmexp.errors import VlmexpError
from vlmexp.tracking.names import logged, logged_name
from vlmexp.tracking.runs import COMPARISON_TAG, RunNotFound, experiment_id, tracking_client

REPORT_TAG = "vlmexp.report"
FINGERPRINT_TAG = "vlmexp.dataset_fingerprint"


@dataclass
class Row:
    model: str
    engine: str
    preset: str
    run_name: str
    run_id: str
    metrics: dict[str, float]
    runs: int = 1  # finished runs of this model x engine x preset (the newest is shown)

    @property
    def latency(self) -> float | None:
        return self.metrics.get("perf/latency_p50_s")

    @property
    def throughput(self) -> float | None:
        return next((v for k, v in sorted(self.metrics.items()) if k.startswith("perf/throughput_")), None)


@dataclass
class Leaderboard:
    experiment: str
    fingerprint: str
    main_metric: str
    metrics: list[str]  # the interval metrics shown, main first
    rows: list[Row]
    left_out: int = 0  # finished runs on other data


def main_metric_of(run) -> str | None:
    """The task's ``main_metric`` (its class names it), from the run's ``vlmexp.task_class`` tag (the
    ``task._target_`` param of a run of an earlier release)."""
    from hydra.utils import get_class

    target = run.data.tags.get("vlmexp.task_class") or run.data.params.get("task._target_")
    try:
        return getattr(get_class(target), "main_metric", None) if target else None
    except (ImportError, ValueError):  # a plugin no longer importable here: the caller falls back
        return None


def build_leaderboard(client, experiment: str, *, tags: dict[str, str] | None = None,
                      fingerprint: str | None = None, metric: str | None = None) -> Leaderboard:
    filters = ["attributes.status = 'FINISHED'"] + [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
    runs = client.search_runs([experiment_id(client, experiment)], filter_string=" and ".join(filters),
                              order_by=["attributes.start_time DESC"], max_results=5000)
    runs = [r for r in runs if COMPARISON_TAG not in r.data.tags and REPORT_TAG not in r.data.tags
            and r.data.tags.get(FINGERPRINT_TAG) and r.data.tags.get("vlmexp.mode", "eval") != "train"]
    if not runs:
        raise RunNotFound(f"experiment {experiment!r} has no finished evaluation run"
                          + (f" with tags {tags}" if tags else ""))
    counts = Counter(r.data.tags[FINGERPRINT_TAG] for r in runs)
    if fingerprint is None:  # the data most runs were evaluated on (newest first among ties)
        fingerprint = max(counts, key=lambda fp: counts[fp])
    elif fingerprint not in counts:
        raise RunNotFound(f"no run of experiment {experiment!r} has dataset fingerprint {fingerprint} "
                          f"(fingerprints: {', '.join(counts)})")
    on_data = [r for r in runs if r.data.tags[FINGERPRINT_TAG] == fingerprint]
    # a short, logged or earlier name (f1, test/f1); runs of earlier releases read under today's names
    metric = logged_name(metric or main_metric_of(on_data[0]) or sorted(on_data[0].data.metrics)[0])
    rows: dict[tuple[str, str, str], Row] = {}
    for r in on_data:  # newest first: the first of each key is shown
        tags_ = r.data.tags
        engine = tags_.get("vlmexp.engine_class") or r.data.params.get("engine._target_", "?")
        key = (tags_.get("vlmexp.model", "?"), engine.rsplit(".", 1)[-1],
               tags_.get("vlmexp.preset", "-"))
        if key in rows:
            rows[key].runs += 1
        else:
            rows[key] = Row(*key, r.info.run_name, r.info.run_id, logged(r.data.metrics))
    shown = [metric] + sorted({k[:-len("_ci_low")] for row in rows.values() for k in row.metrics
                               if k.endswith("_ci_low")} - {metric})
    ordered = sorted(rows.values(), key=lambda row: -row.metrics.get(metric, float("-inf")))
    return Leaderboard(experiment, fingerprint, metric, shown, ordered, len(runs) - len(on_data))


def pareto_front(rows: list[Row], metric: str) -> list[Row]:
    """Rows no other row beats on both: higher main metric and lower median latency."""
    points = sorted((r for r in rows if r.latency is not None and metric in r.metrics),
                    key=lambda r: (r.latency, -r.metrics[metric]))
    front, best = [], float("-inf")
    for r in points:
        if r.metrics[metric] > best:
            front.append(r)
            best = r.metrics[metric]
    return front


def _cell(row: Row, name: str) -> str:
    value = row.metrics.get(name)
    if value is None:
        return "-"
    low, high = row.metrics.get(f"{name}_ci_low"), row.metrics.get(f"{name}_ci_high")
    return f"{value:.2f} [{low:.2f}, {high:.2f}]" if low is not None and high is not None else f"{value:.2f}"


def table(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    header = ["model", "engine", "preset", *board.metrics, "latency p50 (s)", "throughput (/s)", "runs", "run"]
    rows = [[r.model, r.engine, r.preset, *(_cell(r, m) for m in board.metrics),
             "-" if r.latency is None else f"{r.latency:.3f}",
             "-" if r.throughput is None else f"{r.throughput:.2f}", str(r.runs), r.run_id[:8]]
            for r in board.rows]
    return header, rows


def pareto_png(board: Leaderboard, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = board.main_metric
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plotted = [r for r in board.rows if r.latency is not None and metric in r.metrics]
    for r in plotted:
        value = r.metrics[metric]
        low, high = r.metrics.get(f"{metric}_ci_low", value), r.metrics.get(f"{metric}_ci_high", value)
        ax.errorbar(r.latency, value, yerr=[[value - low], [high - value]], fmt="o", capsize=3)
        ax.annotate(f"{r.model} / {r.engine}" + ("" if r.preset == "-" else f" / {r.preset}"), (r.latency, value),
                    textcoords="offset points", xytext=(5, 5), fontsize=8)
    front = pareto_front(plotted, metric)
    if len(front) > 1:
        ax.plot([r.latency for r in front], [r.metrics[metric] for r in front], "--", color="grey",
                label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xlabel("median latency per sample (s)")
    ax.set_ylabel(f"{metric} (95% CI)")
    ax.set_title(f"{board.experiment}: {metric} vs latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def markdown(board: Leaderboard, plot: Path) -> str:
    header, rows = table(board)
    lines = [f"# Leaderboard: {board.experiment}", "",
             f"Dataset fingerprint `{board.fingerprint}`; main metric `{board.main_metric}`; intervals are 95% "
             "bootstrap intervals." + (f" Runs on other data left out: {board.left_out}." if board.left_out else ""),
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", f"![{board.main_metric} vs median latency]({plot.name})"]
    return "\n".join(lines) + "\n"


def html_page(board: Leaderboard, plot: Path) -> str:
    header, rows = table(board)
    image = base64.b64encode(plot.read_bytes()).decode()
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    note = f" Runs on other data left out: {board.left_out}." if board.left_out else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Leaderboard: {esc(board.experiment)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #111; }}
table {{ border-collapse: collapse; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; white-space: nowrap; }}
th {{ background: #f3f4f6; }}
tr:first-child td {{ font-weight: bold; }}
</style></head><body>
<h1>Leaderboard: {esc(board.experiment)}</h1>
<p>Dataset fingerprint <code>{esc(board.fingerprint)}</code>; main metric <code>{esc(board.main_metric)}</code>;
intervals are 95% bootstrap intervals.{esc(note)}</p>
<table id="leaderboard"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>{esc(board.main_metric)} vs median latency</h2>
<img alt="Pareto plot" src="data:image/png;base64,{image}">
</body></html>
"""


def write_report(board: Leaderboard, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = pareto_png(board, out_dir / "pareto.png")
    md, page = out_dir / "leaderboard.md", out_dir / "leaderboard.html"
    md.write_text(markdown(board, plot), encoding="utf-8")
    page.write_text(html_page(board, plot), encoding="utf-8")
    return [md, page, plot]


def log_report(client, board: Leaderboard, files: list[Path]) -> str:
    from mlflow.entities import Metric

    run = client.create_run(experiment_id(client, board.experiment), run_name=f"report {board.experiment}",
                            tags={REPORT_TAG: "true", FINGERPRINT_TAG: board.fingerprint,
                                  "vlmexp.report.main_metric": board.main_metric})
    client.log_batch(run.info.run_id, metrics=[Metric("rows", float(len(board.rows)), int(time.time() * 1000), 0)])
    for path in files:
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def print_table(board: Leaderboard) -> None:
    header, rows = table(board)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"{board.experiment} (dataset {board.fingerprint}), by {board.main_metric}:")
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--tag {text}: expected KEY=VALUE")
    return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlmexp report", description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="MLflow experiment name (a task's runs go to the experiment it names)")
    parser.add_argument("--tag", type=_tag, action="append", default=[], help="only runs with this tag (KEY=VALUE)")
    parser.add_argument("--fingerprint", help="dataset fingerprint (default: the one most runs used)")
    parser.add_argument("--metric", help="main metric (default: the task's)")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else the project's mlflow.db")
    parser.add_argument("--out", type=Path, help="output folder (default: outputs/report/EXPERIMENT)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    args = parser.parse_args(argv)
    try:
        client = tracking_client(args.tracking_uri)
        board = build_leaderboard(client, args.experiment, tags=dict(args.tag), fingerprint=args.fingerprint,
                                  metric=args.metric)
        files = write_report(board, args.out or Path("outputs") / "report" / args.experiment)
        if not args.no_log:
            log_report(client, board, files)
    except VlmexpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print_table(board)
    for path in files:
        print(f"wrote {path}")
    return 0
