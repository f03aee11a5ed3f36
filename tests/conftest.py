"""Shared fixtures: the tiny model built once per session, Hydra composition of the real config."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from vlmexp.config.experiments import register_experiments
from vlmexp.config.schema import register_configs
from vlmexp.paths import conf_dir

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser) -> None:
    parser.addoption("--fault-seed", default=None, help="replay the fault-injection tests' kill instants")
    parser.addoption("--mlflow-ui-shots", default=None, help="where tests/test_mlflow_ui.py keeps its screenshots")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One vlmexp cache (tiny model, generated datasets) for the whole test session."""
    return tmp_path_factory.mktemp("vlmexp-cache")


@pytest.fixture(scope="session")
def tiny_checkpoint(cache_dir) -> str:
    from vlmexp.models.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(str(cache_dir))


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """An initialised, empty MLflow SQLite store: creating the tables takes seconds, copying it does not."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def _isolated_mlflow(monkeypatch, tmp_path, _mlflow_template):
    """Every test gets its own fresh tracking store; never a real one."""
    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copyfile(_mlflow_template, db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    mlflow.set_tracking_uri(f"sqlite:///{db}")  # a URI set in-process by an earlier test would win otherwise


def compose_config(overrides: list[str] | None = None):
    """Compose the real config the way ``python -m vlmexp`` does."""
    register_configs()
    register_experiments()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


@pytest.fixture
def compose_cfg():
    return compose_config


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m vlmexp ARGS`` in a subprocess, as a user would run it."""
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("PYTHONPATH", str(REPO))
    return subprocess.run([sys.executable, "-m", "vlmexp", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
