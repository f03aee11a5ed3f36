"""``vlmexp compare A B``: two evaluation runs on the same data, sample by sample.

Both runs' prediction artifacts are paired by sample id. Each headline metric gets its difference
(B - A) with a paired bootstrap interval (one draw of units for both runs), correctness gets McNemar's
exact test, and the samples whose verdicts differ are listed (CSV, and a gallery for image tasks). The
result is printed and logged to MLflow as a comparison run tagged with both runs' ids. The same model
through two engines makes this the engine parity report.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vlmexp.errors import VlmexpError
from vlmexp.tracking.runs import COMPARISON_TAG, download, find_run, load_records, run_task, tracking_client

FINGERPRINT_TAG = "vlmexp.dataset_fingerprint"


class NotComparable(VlmexpError):
    """The two runs were not evaluated on the same data or task."""


@dataclass
class Comparison:
    a: object  # the MLflow runs
    b: object
    paired: int
    unpaired: int
    metrics: dict[str, dict[str, float]]  # name -> a, b, diff, ci_low, ci_high
    both_right: int = 0
    a_only: int = 0  # A right, B wrong (McNemar's b)
    b_only: int = 0  # A wrong, B right (McNemar's c)
    both_wrong: int = 0
    agreement_rate: float = float("nan")
    mcnemar_p_value: float = float("nan")
    differing: list[tuple[dict, dict, object, object]] = field(default_factory=list)  # record a, b, verdicts
    files: list[Path] = field(default_factory=list)
    run_id: str | None = None  # the comparison run logged to MLflow

    def summary(self) -> dict[str, float]:
        out = {"paired_samples": float(self.paired), "unpaired_samples": float(self.unpaired)}
        for name, m in self.metrics.items():
            out[f"diff_{name}"] = m["diff"]
            if "ci_low" in m:
                out[f"diff_{name}_ci_low"], out[f"diff_{name}_ci_high"] = m["ci_low"], m["ci_high"]
        if self.differing or self.both_right or self.both_wrong:
            out.update(agreement_rate=self.agreement_rate, mcnemar_p_value=self.mcnemar_p_value,
                       both_right=float(self.both_right), a_right_b_wrong=float(self.a_only),
                       a_wrong_b_right=float(self.b_only), both_wrong=float(self.both_wrong),
                       differing_verdicts=float(len(self.differing)))
        return out


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar test: under "both equally often right", each discordant pair is A's
    win or B's with probability 1/2, so the p-value is a binomial test of ``a_only`` of the pairs."""
    from scipy.stats import binomtest

    n = a_only + b_only
    return 1.0 if n == 0 else float(binomtest(a_only, n, 0.5).pvalue)


def compare(ref_a: str, ref_b: str, *, experiment: str | None = None, tracking_uri: str | None = None,
            resamples: int = 1000, seed: int = 0, confidence: float = 0.95, out_dir: Path | None = None,
            log_run: bool = True) -> Comparison:
    from vlmexp.evaluation.bootstrap import paired_differences

    client = tracking_client(tracking_uri)
    run_a, run_b = find_run(client, ref_a, experiment), find_run(client, ref_b, experiment)
    _check_comparable(run_a, run_b)
    out_dir = Path(out_dir or Path("outputs") / "compare" / f"{run_a.info.run_id[:8]}_vs_{run_b.info.run_id[:8]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        task = run_task(client, run_a, Path(tmp) / "a")
        recs_a = load_records(download(client, run_a, "predictions.jsonl", Path(tmp) / "a"))
        recs_b = load_records(download(client, run_b, "predictions.jsonl", Path(tmp) / "b"))
    by_id = {r["id"]: r for r in recs_b if not r.get("skipped")}
    pairs = [(r, by_id[r["id"]]) for r in recs_a if not r.get("skipped") and r["id"] in by_id]
    if not pairs:
        raise NotComparable(f"runs {run_a.info.run_id} and {run_b.info.run_id} share no evaluated sample")
    paired_a, paired_b = [p[0] for p in pairs], [p[1] for p in pairs]
    metrics: dict[str, dict[str, float]] = {}
    for res_a, res_b in zip(task.resamplings(paired_a), task.resamplings(paired_b)):
        metrics.update(paired_differences(res_a, res_b, resamples, seed, confidence))
    result = Comparison(run_a, run_b, len(pairs), len(recs_a) + len(recs_b) - 2 * len(pairs), metrics)
    _verdicts(task, pairs, result)
    result.files = _write_files(task, result, out_dir)
    if log_run:
        _log(client, result)
    return result


def _check_comparable(run_a, run_b) -> None:
    ta, tb = run_a.data.tags, run_b.data.tags
    name = f"runs {run_a.info.run_name} ({run_a.info.run_id}) and {run_b.info.run_name} ({run_b.info.run_id})"
    if run_a.info.experiment_id != run_b.info.experiment_id:
        raise NotComparable(f"{name} are in different experiments: compare runs of one experiment")
    if ta.get("vlmexp.task") != tb.get("vlmexp.task"):
        raise NotComparable(f"{name} ran different tasks ({ta.get('vlmexp.task')} vs {tb.get('vlmexp.task')})")
    fa, fb = ta.get(FINGERPRINT_TAG), tb.get(FINGERPRINT_TAG)
    if not fa or fa != fb:
        raise NotComparable(f"{name} were not evaluated on the same data (dataset fingerprint {fa} vs {fb}): "
                            "refusing to compare")


def _verdicts(task, pairs: list[tuple[dict, dict]], result: Comparison) -> None:
    judged = [(ra, rb, task.verdict(ra), task.verdict(rb)) for ra, rb in pairs]
    judged = [j for j in judged if j[2] is not None and j[3] is not None]
    if not judged:
        return
    for _, _, va, vb in judged:
        if va.correct and vb.correct:
            result.both_right += 1
        elif va.correct:
            result.a_only += 1
        elif vb.correct:
            result.b_only += 1
        else:
            result.both_wrong += 1
    result.differing = [j for j in judged if j[2].answer != j[3].answer]
    result.agreement_rate = 1.0 - len(result.differing) / len(judged)
    result.mcnemar_p_value = mcnemar_exact(result.a_only, result.b_only)


def _write_files(task, result: Comparison, out_dir: Path) -> list[Path]:
    csv_path = out_dir / "differing_verdicts.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "truth", "answer_a", "answer_b", "correct_a", "correct_b"])
        for ra, _, va, vb in result.differing:
            writer.writerow([ra["id"], va.truth, va.answer, vb.answer, va.correct, vb.correct])
    markdown = out_dir / "comparison.md"
    markdown.write_text(comparison_markdown(result), encoding="utf-8")
    files = [csv_path, markdown]
    gallery = _gallery(task, result, out_dir / "differing_verdicts.png")
    if gallery:
        files.append(gallery)
    return files


def _gallery(task, result: Comparison, path: Path, size: int = 12, columns: int = 4) -> Path | None:
    """The samples whose verdicts differ, each titled with both answers and the truth (image tasks)."""
    shown = [(ra, va, vb, image) for ra, _, va, vb in result.differing[:size]
             if (image := task.record_image(ra)) is not None]
    if not shown:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (len(shown) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (record, va, vb, image) in zip(axes.ravel(), shown):
        ax.imshow(image)
        ax.set_title(f"{record['id']}"[:36] + f"\nA: {va.answer[:16]} | B: {vb.answer[:16]}\ntruth: {va.truth[:24]}",
                     fontsize=7)
    fig.suptitle(f"verdicts that differ: A = {result.a.info.run_name}, B = {result.b.info.run_name}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _interval(m: dict[str, float]) -> str:
    text = f"{m['diff']:+.4f}"
    return text + (f" [{m['ci_low']:+.4f}, {m['ci_high']:+.4f}]" if "ci_low" in m else "")


def comparison_rows(result: Comparison) -> list[list[str]]:
    rows = [[name, f"{m['a']:.4f}", f"{m['b']:.4f}", _interval(m)] for name, m in result.metrics.items()]
    return rows


def comparison_markdown(result: Comparison) -> str:
    a, b = result.a.info, result.b.info
    lines = [f"# {a.run_name} vs {b.run_name}", "",
             f"- A: {a.run_name} (`{a.run_id}`)", f"- B: {b.run_name} (`{b.run_id}`)",
             f"- dataset fingerprint: `{result.a.data.tags.get(FINGERPRINT_TAG)}`",
             f"- paired samples: {result.paired} (unpaired: {result.unpaired})", "",
             "| metric | A | B | B - A [95% paired bootstrap] |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in comparison_rows(result)]
    if result.differing or result.both_right or result.both_wrong:
        lines += ["", "| | B right | B wrong |", "|---|---|---|",
                  f"| A right | {result.both_right} | {result.a_only} |",
                  f"| A wrong | {result.b_only} | {result.both_wrong} |", "",
                  f"- McNemar exact p-value: {result.mcnemar_p_value:.4g}",
                  f"- agreement rate: {result.agreement_rate:.4f} ({len(result.differing)} verdicts differ)"]
    return "\n".join(lines) + "\n"


def _log(client, result: Comparison) -> None:
    from mlflow.entities import Metric, RunTag

    a, b = result.a.info, result.b.info
    tags = {COMPARISON_TAG: "true", "vlmexp.comparison.a": a.run_id, "vlmexp.comparison.b": b.run_id,
            "vlmexp.comparison.a_name": a.run_name, "vlmexp.comparison.b_name": b.run_name,
            FINGERPRINT_TAG: result.a.data.tags.get(FINGERPRINT_TAG, "")}
    run = client.create_run(a.experiment_id, run_name=f"compare {a.run_name} vs {b.run_name}", tags=tags)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in result.summary().items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    for path in result.files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    result.run_id = run_id


def print_comparison(result: Comparison) -> None:
    header = ["metric", "A", "B", "B - A [95% CI]"]
    rows = comparison_rows(result)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    print(f"A = {result.a.info.run_name} ({result.a.info.run_id})\nB = {result.b.info.run_name} "
          f"({result.b.info.run_id})\npaired samples: {result.paired}")
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    if result.differing or result.both_right or result.both_wrong:
        print(f"agreement rate {result.agreement_rate:.4f}; A right/B wrong {result.a_only}, A wrong/B right "
              f"{result.b_only}; McNemar exact p = {result.mcnemar_p_value:.4g}")
    for path in result.files:
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlmexp compare", description=__doc__.splitlines()[0])
    parser.add_argument("a", help="MLflow run id or run name (the baseline)")
    parser.add_argument("b", help="MLflow run id or run name")
    parser.add_argument("--experiment", help="the MLflow experiment holding both runs (default: any)")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else the project's mlflow.db")
    parser.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="folder for the CSV, gallery and Markdown")
    parser.add_argument("--no-log", action="store_true", help="do not log a comparison run to MLflow")
    args = parser.parse_args(argv)
    try:
        result = compare(args.a, args.b, experiment=args.experiment, tracking_uri=args.tracking_uri,
                         resamples=args.bootstrap, seed=args.seed, out_dir=args.out, log_run=not args.no_log)
    except VlmexpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print_comparison(result)
    return 0
