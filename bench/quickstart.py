"""Train the quickstart (`python -m vlmexp`) from a cold cache, once per seed, and report its metrics.

    python bench/quickstart.py                         # seed 42 (the default config)
    python bench/quickstart.py --seeds 0-9             # one fresh cache per seed, one row per seed
    python bench/quickstart.py --seeds 0-9 --threads 1 # torch.set_num_threads(1): another float order
    python bench/quickstart.py --seeds 0,3,7 -- train.epochs=10   # extra Hydra overrides after --

Each seed runs in its own process with its own empty cache, so nothing trained for one seed is
reused by the next. The target on a 2-core CPU machine: every seed under 5 minutes with
f1 >= 0.9 and parse_success_rate >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KEYS = ("f1", "parse_success_rate", "accuracy", "early_fire_score", "best_epoch", "num_samples")
TARGET = {"f1": 0.9, "parse_success_rate": 0.95}


def parse_seeds(text: str) -> list[int]:
    """``0-9`` or ``0,3,7`` or ``1-3,8``."""
    seeds: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            seeds.extend(range(int(lo), int(hi) + 1))
        elif part:
            seeds.append(int(part))
    return seeds


def run_one(seed: int, threads: int | None, overrides: list[str], cache: str) -> dict:
    """One quickstart in this process; returns wall time and the metrics of KEYS."""
    import torch
    from hydra import compose, initialize_config_dir

    from vlmexp.config.experiments import register_experiments
    from vlmexp.config.schema import register_configs
    from vlmexp.paths import conf_dir
    from vlmexp.runner import run

    if threads:
        torch.set_num_threads(threads)
    register_configs()
    register_experiments()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config",
                      overrides=[f"paths.cache_dir={cache}", "logger=none", f"seed={seed}", *overrides])
    began = time.perf_counter()
    metrics = run(cfg, output_dir=Path(cache) / "output")
    return {"seed": seed, "threads": torch.get_num_threads(), "wall_s": round(time.perf_counter() - began, 1),
            **{k: round(float(metrics[k]), 4) for k in KEYS if k in metrics}}


def versions() -> str:
    from importlib.metadata import version

    names = ("torch", "transformers", "accelerate", "numpy")
    return ", ".join(f"{n} {version(n)}" for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="42", help="seeds to train with, e.g. 0-9 or 0,3,7 (default 42)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) in each run")
    parser.add_argument("--cache-dir", default=None, help="parent of the per-seed caches (default: a temp dir)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: run one seed
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    if args.one is not None:
        print("RESULT " + json.dumps(run_one(args.one, args.threads, overrides, args.cache_dir)), flush=True)
        return

    parent = Path(args.cache_dir or tempfile.mkdtemp(prefix="vlmexp-bench-"))
    seeds = parse_seeds(args.seeds)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, {versions()}")
    header = ["seed", "threads", "wall_s", *KEYS]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    rows = []
    for seed in seeds:
        cmd = [sys.executable, __file__, "--one", str(seed), "--cache-dir", str(parent / f"seed{seed}")]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd + overrides, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            print(f"| {seed} | failed: {tail[0]} |", flush=True)
            rows.append({"seed": seed})
            continue
        row = json.loads(lines[-1][len("RESULT "):])
        rows.append(row)
        print("| " + " | ".join(str(row.get(k, "")) for k in header) + " |", flush=True)
    ok = [r for r in rows if all(r.get(k, -1) >= v for k, v in TARGET.items())]
    walls = [r["wall_s"] for r in rows if "wall_s" in r]
    f1s = [r["f1"] for r in rows if "f1" in r]
    print(f"summary: {len(ok)}/{len(rows)} seeds reach f1 >= {TARGET['f1']} and parse_success_rate >= "
          f"{TARGET['parse_success_rate']}; min f1 {min(f1s, default=float('nan'))}; "
          f"wall max {max(walls, default=float('nan'))} s")
    sys.exit(0 if len(ok) == len(rows) else 1)


if __name__ == "__main__":
    main()
