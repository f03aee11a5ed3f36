"""Time `python -m vlmexp task=binary` (tiny model, generated set) in a fresh cache and MLflow store.

    python bench/binary_tiny.py

Prints the wall time and the results table; the target on two CPU cores is a few minutes at most
with accuracy and roc_auc >= 0.9. The first part of the time is building the tiny model and the
generated images, which a warm cache skips.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="vlmexp-bench-") as tmp:
        env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db")
        began = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "vlmexp", "task=binary", f"paths.cache_dir={tmp}/cache",
                              f"hydra.run.dir={tmp}/run"], cwd=tmp, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - began
    if out.returncode:
        sys.exit(out.stderr[-3000:])
    print(out.stdout.strip())
    print(f"wall time: {elapsed:.1f} s")


if __name__ == "__main__":
    main()
