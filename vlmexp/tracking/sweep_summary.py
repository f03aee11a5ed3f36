"""The summary a sweep's MLflow parent run holds once its last job ended: a table of the jobs (their
overrides and metrics), the best job (its overrides as ``best_<key>`` params, its metric as
``sweep/best``, and all its metrics under their own names) and, for each swept key, a plot of the
main metric against the key's values.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from vlmexp.tracking.names import logged, logged_name

SUMMARY_CSV, SUMMARY_MD = "sweep_summary.csv", "sweep_summary.md"


def parse_overrides(text: str) -> dict[str, str]:
    """``a=1 b=x`` (the ``vlmexp.overrides`` tag of a job's run) as a mapping."""
    pairs = [item.split("=", 1) for item in text.split() if "=" in item]
    return {key.lstrip("+~"): value for key, value in pairs}


JOB_TAG = "vlmexp.sweep_job"  # a job's number in its sweep (its folder's name)


def _job_number(run) -> int:
    """The job's number in the sweep: its tag, else the ``#N`` the run names of older versions end with."""
    tail = run.data.tags.get(JOB_TAG) or run.info.run_name.rsplit("#", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def summarise(client, parent_id: str, sweep_dir: Path, metric: str | None, direction: str,
              complete: bool = True) -> dict:
    """Write the summary of the parent's children into ``sweep_dir``, log it on the parent, end it
    (FAILED when a job did not finish or the sweep stopped before its last job)."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    children = sorted(client.search_runs(experiments, filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'"),
                      key=lambda r: (_job_number(r), r.info.start_time))
    jobs = [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
             "overrides": parse_overrides(r.data.tags.get("vlmexp.overrides", "")), "metrics": logged(r.data.metrics),
             "metric": metric or r.data.tags.get("vlmexp.main_metric")} for r in children]
    metric = metric or next((j["metric"] for j in jobs if j["metric"]), None)
    metric = logged_name(metric) if metric else None  # f1, test/f1 and an earlier release's tag alike
    keys = sorted({k for j in jobs for k in j["overrides"]})
    swept = [k for k in keys if len({j["overrides"].get(k) for j in jobs}) > 1]
    scored = [j for j in jobs if j["status"] == "FINISHED" and metric in j["metrics"]
              and not math.isnan(j["metrics"][metric])]
    sign = -1.0 if direction == "minimize" else 1.0
    best = max(scored, key=lambda j: sign * j["metrics"][metric]) if scored else None

    files = [_write_csv(sweep_dir / SUMMARY_CSV, jobs, keys), _write_md(sweep_dir / SUMMARY_MD, jobs, swept, metric,
                                                                           best)]
    files += [_plot(sweep_dir / f"sweep_{key.replace('/', '_')}.png", jobs, key, metric) for key in swept
              if metric and scored]
    summary = {"jobs": len(jobs), "finished": sum(j["status"] == "FINISHED" for j in jobs), "metric": metric,
               "swept": swept, "best_run_id": best["run_id"] if best else None}
    client.log_batch(parent_id, params=_params(best, swept, metric, direction), metrics=_metrics(best, metric, jobs))
    client.set_tag(parent_id, "vlmexp.best_run_id", summary["best_run_id"] or "")
    for path in files:
        client.log_artifact(parent_id, str(path))
    failed = any(j["status"] != "FINISHED" for j in jobs)
    client.set_terminated(parent_id, "FAILED" if failed or not jobs or not complete else "FINISHED")
    return summary


def _params(best, swept: list[str], metric: str | None, direction: str) -> list:
    from mlflow.entities import Param

    params = [Param("sweep_metric", str(metric)), Param("sweep_direction", direction)]
    if best:
        params += [Param(f"best_{key}", best["overrides"].get(key, "")) for key in swept]
        params.append(Param("best_run_name", best["name"]))
    return params


def _metrics(best, metric: str | None, jobs: list[dict]) -> list:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    values = [Metric("sweep/jobs", float(len(jobs)), now, 0),
              Metric("sweep/jobs_finished", float(sum(j["status"] == "FINISHED" for j in jobs)), now, 0)]
    if best:
        values.append(Metric("sweep/best", best["metrics"][metric], now, 0))  # of sweep_metric
        # the best job's own metrics under their own names: the parent sorts and compares with its jobs
        values += [Metric(k, v, now, 0) for k, v in best["metrics"].items() if not k.startswith("system/")]
    return values


def _write_csv(path: Path, jobs: list[dict], keys: list[str]) -> Path:
    metrics = sorted({m for j in jobs for m in j["metrics"]})
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["run_name", "run_id", "status", *keys, *metrics])
        for j in jobs:
            writer.writerow([j["name"], j["run_id"], j["status"], *(j["overrides"].get(k, "") for k in keys),
                             *(j["metrics"].get(m, "") for m in metrics)])
    return path


def _write_md(path: Path, jobs: list[dict], swept: list[str], metric: str | None, best) -> Path:
    head = ["run", "status", *swept, str(metric)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for j in jobs:
        value = j["metrics"].get(metric)
        cells = [j["name"] + (" (best)" if j is best else ""), j["status"], *(j["overrides"].get(k, "") for k in swept),
                 f"{value:.4f}" if isinstance(value, float) else ""]
        lines.append("| " + " | ".join(cells) + " |")
    if best:
        lines += ["", f"best: {best['name']} ({best['run_id']}), {metric} = {best['metrics'][metric]:.4f}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _plot(path: Path, jobs: list[dict], key: str, metric: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(j["overrides"].get(key, ""), j["metrics"][metric]) for j in jobs if metric in j["metrics"]]
    numeric = all(_number(x) is not None for x, _ in points)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if numeric:
        xs = [_number(x) for x, _ in points]
        ax.scatter(xs, [y for _, y in points])
        if min(xs) > 0 and max(xs) / min(xs) >= 100:
            ax.set_xscale("log")
    else:
        labels = sorted({x for x, _ in points})
        ax.scatter([labels.index(x) for x, _ in points], [y for _, y in points])
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by {key}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
