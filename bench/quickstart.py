"""Time the quickstart (`python -m vlmexp`) from a cold cache and report its metrics.

    python bench/quickstart.py [--cache-dir DIR] [extra Hydra overrides ...]

The target on a 2-core CPU machine: under 5 minutes, f1 >= 0.9, parse_success_rate >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    from hydra import compose, initialize_config_dir

    from vlmexp.config.experiments import register_experiments
    from vlmexp.config.schema import register_configs
    from vlmexp.paths import conf_dir
    from vlmexp.runner import run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None, help="cache to use (default: a new temporary one)")
    args, overrides = parser.parse_known_args()
    cache = args.cache_dir or tempfile.mkdtemp(prefix="vlmexp-bench-")
    register_configs()
    register_experiments()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"paths.cache_dir={cache}", "logger=none", *overrides])
    began = time.perf_counter()
    metrics = run(cfg, output_dir=Path(cache) / "output")
    elapsed = time.perf_counter() - began
    keys = ("f1", "parse_success_rate", "accuracy", "early_fire_score", "best_epoch", "num_images")
    print(json.dumps({"wall_s": round(elapsed, 1), **{k: round(metrics[k], 4) for k in keys if k in metrics}}))


if __name__ == "__main__":
    main()
