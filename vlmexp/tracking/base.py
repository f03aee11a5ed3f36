"""The tracker protocol the runner talks to; MLflow is one implementation, 'none' another."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Tracker:
    """No-op base: every call is optional for a tracker to act on."""

    run_id: str | None = None

    def start(self, run_name: str, *, resume_run_id: str | None = None, sweep: str | None = None) -> str | None:
        return None

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def end(self, status: str = "FINISHED") -> None: ...
