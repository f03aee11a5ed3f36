"""``python -m vlmexp``: Hydra entry point. Errors a user can fix print one line and exit non-zero."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vlmexp import distributed
from vlmexp.config.experiments import register_experiments
from vlmexp.config.preflight import preflight
from vlmexp.config.schema import register_configs
from vlmexp.errors import VlmexpError
from vlmexp.paths import conf_dir

log = logging.getLogger("vlmexp")


def _job(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from vlmexp.runner import main_metric, run

    hc = HydraConfig.get()
    # absolute: a launcher's job may run elsewhere (a SLURM node's working folder)
    sweep = str(Path(hc.runtime.cwd, hc.sweep.dir)) if hc.mode == RunMode.MULTIRUN else None
    try:
        metrics = run(cfg, output_dir=Path(hc.runtime.output_dir), overrides=list(hc.overrides.task), sweep=sweep)
        # a sweeper that optimises (Optuna) reads the job's return value
        metric = main_metric(cfg, metrics) if hc.mode == RunMode.MULTIRUN else None
        return metrics.get(metric) if metric else None
    except VlmexpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


def _quiet_other_process() -> None:
    """In a run of several processes, only the main one writes Hydra's run folder and log file and
    shows progress: the others log warnings to the console and create no file."""
    import os

    os.environ["TQDM_DISABLE"] = "1"
    sys.argv += ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=stdout",
                 "hydra.job_logging.root.level=WARNING"]


#: ``vlmexp <name> ...``: commands over finished runs, beside the Hydra entry point (``vlmexp key=value``).
SUBCOMMANDS = {"compare": "vlmexp.compare", "report": "vlmexp.report"}


def main() -> None:
    if not distributed.is_main():
        _quiet_other_process()
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        import importlib

        sys.exit(importlib.import_module(SUBCOMMANDS[sys.argv[1]]).main(sys.argv[2:]))
    register_configs()
    register_experiments()
    preflight(str(conf_dir()))
    hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")(_job)()
