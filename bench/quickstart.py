"""Time the quickstart (`python -m vlmexp`) from a cold cache and report its metrics.

    python bench/quickstart.py [--cache-dir DIR] [extra Hydra overrides ...]

The target on a 2-core CPU machine: under 5 minutes, f1 >= 0.9, parse_success_rate >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None, help="cache to use (default: a new temporary one)")
    args, overrides = parser.parse_known_args()
    cache = args.cache_dir or tempfile.mkdtemp(prefix="vlmexp-bench-")
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vlmexp", f"paths.cache_dir={cache}", "logger=none", *overrides],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - began
    [predictions] = Path(cache, "runs", "smoke").glob("*/predictions.jsonl")
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    tp = sum(r["truth"] and r["pred"] and r["parse_ok"] for r in records)
    fp = sum(not r["truth"] and r["pred"] and r["parse_ok"] for r in records)
    fn = sum(r["truth"] and not (r["pred"] and r["parse_ok"]) for r in records)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    parse = sum(r["parse_ok"] for r in records) / len(records)
    print(json.dumps({"wall_s": round(elapsed, 1), "f1": round(f1, 4), "parse_success_rate": round(parse, 4),
                      "images": len(records)}))


if __name__ == "__main__":
    main()
