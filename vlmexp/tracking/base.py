"""The tracker protocol the runner talks to; MLflow is one implementation, 'none' another."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Tracker:
    """No-op base: every call is optional for a tracker to act on."""

    run_id: str | None = None

    def check(self) -> None:
        """Fail fast (a :class:`~vlmexp.errors.TrackingError`) when the tracking store cannot be
        reached; the runner calls it before anything heavy is built."""

    def start(self, run_name: str, *, resume_run_id: str | None = None, sweep: str | None = None,
              state_dir: Path | None = None) -> str | None:
        """Open (or continue) the run; ``state_dir`` is the run's work dir, where a tracker may keep
        what it could not send, for the next run of the same command."""
        return None

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_input(self, name: str, source: str, digest: str, context: str | None = None,
                  profile: dict | None = None) -> None:
        """Register a dataset the run used or produced (``mlflow.log_input``)."""

    def log_table(self, data: dict[str, list], artifact_file: str) -> None:
        """A table of equal-length columns (``mlflow.log_table``: per-sample results runs are compared by)."""

    def log_model(self, checkpoint: Path, config: Path) -> None:
        """A fine-tuned checkpoint (and the run's resolved config beside it) as the run's model,
        registered when the tracker is configured to."""

    def set_experiment_description(self, text: str) -> None:
        """The description the run's experiment shows (its task's)."""

    def end(self, status: str = "FINISHED") -> None: ...

    def where(self) -> str | None:
        """Where to look at the run that ended: printed at the end of the run (None: nothing to print)."""
        return None

    # -- sweeps (``-m``): called by the sweep callback, once, in the process that launches the jobs --
    def open_sweep(self, sweep_dir: Path, name: str, params: dict[str, str] | None = None) -> str | None:
        """Make the sweep's parent run (``params``: the swept keys and their values) before any job
        starts, and note it in ``sweep_dir``, where every job's :meth:`start` (given ``sweep=sweep_dir``)
        finds it."""
        return None

    def close_sweep(self, sweep_dir: Path, metric: str | None, direction: str, complete: bool = True) -> dict | None:
        """After the last job (or when a failed job stopped the sweep: ``complete`` false): the summary of
        the jobs on the parent run (and returned), which ends."""
        return None
