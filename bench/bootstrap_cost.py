"""Time the bootstrap intervals (``eval.bootstrap``) on record sets of several sizes, per task.

    python bench/bootstrap_cost.py [RESAMPLES]

Prints seconds per call of ``confidence_intervals`` (what the runner adds to an evaluation). The
quickstart's test set is 80 smoke frames in 10 sequences.
"""

from __future__ import annotations

import random
import sys
import time

from hydra.utils import instantiate

from vlmexp.config.experiments import register_experiments
from vlmexp.config.schema import register_configs
from vlmexp.evaluation.bootstrap import confidence_intervals


def task(name: str):
    from hydra import compose, initialize_config_dir

    from vlmexp.paths import conf_dir

    register_configs()
    register_experiments()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return instantiate(compose(config_name="config", overrides=[f"task={name}"]).task, _recursive_=False)


def smoke(n: int, rng: random.Random) -> list[dict]:
    return [{"id": f"s{i // 8}/{i % 8}", "sequence": f"s{i // 8}", "frame": i % 8, "time_s": None, "truth": i % 8 > 2,
             "pred": rng.random() > 0.4, "parse_ok": rng.random() > 0.05, "width": 160, "height": 120,
             "latency_s": rng.random(), "wall_s": 0.1} for i in range(n)]


def binary(n: int, rng: random.Random) -> list[dict]:
    return [{"id": str(i), "truth": int(rng.random() > 0.5), "pred": int(rng.random() > 0.5), "prob": rng.random()}
            for i in range(n)]


def sentiment(n: int, rng: random.Random) -> list[dict]:
    labels = ["Positive", "Negative", "Neutral"]
    return [{"id": str(i), "true_label": rng.choice(labels), "predicted_label": rng.choice(labels)} for i in range(n)]


def main() -> None:
    resamples = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rng = random.Random(0)
    for name, make in (("smoke", smoke), ("binary", binary), ("sentiment", sentiment)):
        plugin = task(name)
        for n in (80, 2000, 20000):
            records = make(n, rng)
            began = time.perf_counter()
            confidence_intervals(plugin, records, resamples, seed=42)
            print(f"{name:9s} {n:6d} records, {resamples} resamples: {time.perf_counter() - began:.3f} s")


if __name__ == "__main__":
    main()
