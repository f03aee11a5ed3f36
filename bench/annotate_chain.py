"""Seed 003's chain on generated shapes: annotate with `detector=labels captioner=engine model=tiny`, fine-tune
`task=vqa data.format=llava data.root=<export>` with the tiny model, and score the held-out (val + test)
count and existence questions, beside the score of always giving each question type's most common
training answer.

    python bench/annotate_chain.py --images 40 --seeds 0-2 [--epochs 10]

Each seed generates its own set and uses its own split, in a fresh cache and MLflow store.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.shapes import write_shapes_set  # noqa: E402

KINDS = ("count", "existence")


def _run(args: list[str], cwd: Path, env: dict) -> None:
    out = subprocess.run([sys.executable, "-m", "vlmexp", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr[-3000:])


def one_seed(seed: int, images: int, epochs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="vlmexp-bench-") as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db")
        write_shapes_set(tmp / "shapes", images, seed=seed)
        began = time.perf_counter()
        _run(["task=annotate", f"data.root={tmp / 'shapes'}", "model=tiny", "captioner.max_new_tokens=8",
              f"task.output_dir={tmp / 'export'}", f"seed={seed}", f"paths.cache_dir={tmp / 'cache'}"], tmp, env)
        _run(["task=vqa", "data.format=llava", f"data.root={tmp / 'export'}", "model=tiny", f"train.epochs={epochs}",
              f"seed={seed}", f"paths.cache_dir={tmp / 'cache'}"], tmp, env)
        elapsed = time.perf_counter() - began
        entries = json.loads((tmp / "export" / "annotations.json").read_text())["images"]
        kind = {p["question"]: p["template"] for e in entries for p in e["qa"]}
        (samples,) = (tmp / "outputs" / "vqa").rglob("vqa_samples.csv")
        rows = [r for r in csv.DictReader(samples.open()) if kind.get(r["question"]) in KINDS]
    train = [p for e in entries if e["split"] == "train" for p in e["qa"] if p["template"] in KINDS]
    common = {k: Counter(p["answer"] for p in train if p["template"] == k).most_common(1)[0][0] for k in KINDS}
    return {"seed": seed, "questions": len(rows),
            "exact_match": sum(r["correct"] == "True" for r in rows) / len(rows),
            "majority": sum(r["answer"] == common[kind[r["question"]]] for r in rows) / len(rows),
            "wall_s": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    first, _, last = args.seeds.partition("-")
    print("| seed | held-out count + existence questions | exact match | majority answer | wall s |")
    print("|---|---|---|---|---|")
    for seed in range(int(first), int(last or first) + 1):
        r = one_seed(seed, args.images, args.epochs)
        print(f"| {r['seed']} | {r['questions']} | {r['exact_match']:.3f} | {r['majority']:.3f} | {r['wall_s']:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
