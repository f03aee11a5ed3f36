"""One process against two (torchrun, gloo on CPU) on the smoke quickstart with the tiny model.

    python bench/scaleout.py [--train-sequences 8] [--epochs 2]

Trains and evaluates with the same global batch (1 x 8 against 2 x 4) in fresh caches and MLflow
stores, after one warm-up run that builds the tiny model and the data; prints the wall time of
each, the largest relative difference of the logged train and validation losses, and whether the
predictions are the same. Every process runs one thread (torchrun's default). On CPU cores shared
with other work the times are loose.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def launch(folder: Path, cache: Path, args: list[str], processes: int) -> float:
    # one thread per process, as torchrun sets for each of its processes
    env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=f"sqlite:///{folder}/mlflow.db",
               OMP_NUM_THREADS="1")
    folder.mkdir(parents=True, exist_ok=True)
    prefix = [sys.executable, "-m", "vlmexp"]
    if processes > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        prefix = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(processes),
                  "--master_port", str(port), "-m", "vlmexp"]
    began = time.perf_counter()
    out = subprocess.run([*prefix, *args, f"paths.cache_dir={cache}"], cwd=folder, env=env, capture_output=True,
                         text=True, timeout=1800)
    if out.returncode:
        sys.exit(out.stdout[-2000:] + out.stderr[-3000:])
    return time.perf_counter() - began


def outcome(folder: Path, cache: Path) -> tuple[dict, list]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    losses = {k: [m.value for m in client.get_metric_history(run.info.run_id, k)] for k in ("train/loss", "val/loss")}
    (work,) = (cache / "runs" / "smoke").iterdir()
    records = [{k: v for k, v in json.loads(line).items() if k not in ("latency_s", "wall_s", "path")}
               for line in (work / "predictions.jsonl").read_text().splitlines()]
    return losses, records


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-sequences", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    opts = parser.parse_args()
    args = ["task=smoke", "model=tiny", "hardware=cpu", f"data.synthetic.train_sequences={opts.train_sequences}",
            "data.synthetic.val_sequences=2", "data.synthetic.test_sequences=4", f"train.epochs={opts.epochs}"]
    with tempfile.TemporaryDirectory(prefix="vlmexp-bench-") as tmp:
        root = Path(tmp)
        launch(root / "warm", root / "warm-cache", [*args, "mode=eval"], 1)  # the tiny model and the data
        results = {}
        for processes, batch in ((1, 8), (2, 4)):
            cache = root / f"cache{processes}"
            shutil.copytree(root / "warm-cache", cache, ignore=shutil.ignore_patterns("runs"))
            wall = launch(root / f"p{processes}", cache, [*args, f"train.batch_size={batch}"], processes)
            results[processes] = (wall, *outcome(root / f"p{processes}", cache))
    (wall1, losses1, records1), (wall2, losses2, records2) = results[1], results[2]
    print(f"1 process  x 8 examples: {wall1:6.1f} s (train + evaluate {len(records1)} images)")
    print(f"2 processes x 4 examples: {wall2:6.1f} s")
    for key in losses1:
        diff = max(abs(a - b) / abs(a) for a, b in zip(losses1[key], losses2[key]))
        print(f"{key}: {len(losses1[key])} values, largest relative difference {diff:.2e}")
    print(f"predictions identical: {records1 == records2}")


if __name__ == "__main__":
    main()
