"""The Hydra callback that gives a sweep (``-m``) its one parent run, whatever launches the jobs.

``on_multirun_start`` runs once, in the process that launches the jobs, before any starts: the
logger makes the parent run (named after the swept keys, which are its params) and notes its id, and
the swept keys that name the jobs' runs, in the sweep folder, where every job (in this process,
a joblib worker, a submitit process, a SLURM node) finds it and opens its own run as a child. The
parent stays RUNNING until ``on_multirun_end``, which puts the sweep's summary on it and ends it.
Configured in conf/config.yaml (``hydra.callbacks.sweep``).
"""

from __future__ import annotations

import atexit
import json
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
    def __init__(self) -> None:
        self._open: DictConfig | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from vlmexp.atomic import write_text_atomic
        from vlmexp.tracking.run_names import SWEPT_FILE, sweep_label, swept_overrides

        sweep_dir = _sweep_dir(config)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        swept = swept_overrides(config)  # each job's run is named after its values of these keys
        write_text_atomic(sweep_dir / SWEPT_FILE, json.dumps(swept))
        parent = _tracker(config).open_sweep(sweep_dir, sweep_label(config, swept), params=swept)
        if parent:
            log.info("sweep parent run %s (%s)", parent, sweep_dir)
            # A job that fails stops the sweep before on_multirun_end: the parent is then summarised
            # and marked FAILED when the process exits, instead of staying RUNNING.
            self._open = config
            atexit.register(self._close_at_exit)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._close(complete=True)

    def _close_at_exit(self) -> None:
        try:
            self._close(complete=False)
        except Exception as exc:  # the store went away meanwhile: say so in one line
            log.warning("the sweep's parent run could not be closed: %s", str(exc).splitlines()[0] if str(exc) else exc)

    def _close(self, complete: bool) -> None:
        config, self._open = self._open, None
        if config is None:
            return
        summary = _tracker(config).close_sweep(_sweep_dir(config), config.sweep.metric, config.sweep.direction,
                                               complete=complete)
        if summary:
            log.info("sweep summary: %d jobs (%d finished), best run %s by %s", summary["jobs"], summary["finished"],
                     summary["best_run_id"], summary["metric"])
