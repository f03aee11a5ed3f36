"""The Hydra callback that gives a sweep (``-m``) its one parent run, whatever launches the jobs.

``on_multirun_start`` runs once, in the process that launches the jobs, before any starts: the
logger makes the parent run and notes its id in the sweep folder, where every job (in this process,
a joblib worker, a submitit process, a SLURM node) finds it and opens its own run as a child. The
parent stays RUNNING until ``on_multirun_end``, which puts the sweep's summary on it and ends it.
Configured in conf/config.yaml (``hydra.callbacks.sweep``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def _sweep_dir(config: DictConfig) -> Path:
    return Path(config.hydra.runtime.cwd, config.hydra.sweep.dir)


def _tracker(config: DictConfig):
    from hydra.utils import instantiate

    return instantiate(config.logger)


class SweepParentCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = _sweep_dir(config)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        parent = _tracker(config).open_sweep(sweep_dir, f"sweep {sweep_dir.name}")
        if parent:
            log.info("sweep parent run %s (%s)", parent, sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summary = _tracker(config).close_sweep(_sweep_dir(config), config.sweep.metric, config.sweep.direction)
        if summary:
            log.info("sweep summary: %d jobs (%d finished), best run %s by %s", summary["jobs"], summary["finished"],
                     summary["best_run_id"], summary["metric"])
