"""Sweeps through Hydra's launchers and the Optuna sweeper, each job a real process: one MLflow parent
run made before any job starts, every job its child, the summary on the parent when the sweep ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LIMIT_S = 300
TINY = ["task=smoke", "model=tiny", "hardware=cpu", "data.synthetic.train_sequences=2",
        "data.synthetic.val_sequences=1", "data.synthetic.test_sequences=1"]


def sweep(args: list[str], cwd: Path, cache: Path, code: int = 0) -> str:
    """``python -m vlmexp -m ARGS`` in its own process group, killed (and failed) past the time limit."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "vlmexp", "-m", *args, f"paths.cache_dir={cache}"], cwd=cwd,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        out, _ = process.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"the sweep did not end within {LIMIT_S} s")
    assert process.returncode == code, out[-5000:]
    return out


def parent_and_children():
    import mlflow

    client = mlflow.MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if "vlmexp.sweep_parent" in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    [parent] = parents
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1  # every other run is a child of the one parent
    return client, parent, children


def assert_summary(client, parent, children, swept: list[str], metric: str, jobs: int) -> None:
    assert parent.info.status == "FINISHED"
    assert len(children) == jobs and all(c.info.status == "FINISHED" for c in children)
    assert all(parent.info.start_time <= c.info.start_time for c in children)  # made before any job started
    assert sorted(c.data.tags["vlmexp.sweep_job"] for c in children) == [str(i) for i in range(jobs)]
    # each job is named after its own values of the swept keys; the parent after the keys
    assert len({c.info.run_name for c in children}) == jobs
    for c in children:
        assert c.info.run_name.startswith("smoke tiny hf ")
        assert c.info.run_name.split(" ", 3)[3] == " ".join(f"{k.rsplit('.', 1)[-1]}={value(c, k)}" for k in swept)
    assert parent.info.run_name.startswith("sweep smoke tiny hf: ")
    assert set(swept) <= set(parent.data.params)
    best = max(children, key=lambda c: c.data.metrics[metric])
    assert parent.data.metrics["sweep/best"] == best.data.metrics[metric]
    tied_metrics = [c.data.metrics for c in children if c.data.metrics[metric] == best.data.metrics[metric]]
    own = {k: v for k, v in parent.data.metrics.items() if k in best.data.metrics and not k.startswith("system/")}
    assert own and any(own == {k: m[k] for k in own} for m in tied_metrics)  # the best job's metrics
    assert parent.data.metrics["sweep/jobs"] == jobs == parent.data.metrics["sweep/jobs_finished"]
    assert parent.data.params["sweep_metric"] == metric
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_summary.csv", "sweep_summary.md", *(f"sweep_{k}.png" for k in swept)} <= artifacts
    table = Path(client.download_artifacts(parent.info.run_id, "sweep_summary.csv")).read_text().splitlines()
    assert len(table) == jobs + 1 and all(k in table[0] for k in swept)
    tied = [c for c in children if c.data.metrics[metric] == best.data.metrics[metric]]
    for key in swept:
        assert len({value(c, key) for c in children}) == jobs  # the jobs' own overrides
        assert parent.data.params[f"best_{key}"] in {value(c, key) for c in tied}
    assert parent.data.tags["vlmexp.best_run_id"] in {c.info.run_id for c in tied}


def value(run, key: str) -> str:
    """The value ``key`` had in the run's overrides."""
    return run.data.tags["vlmexp.overrides"].split(f"{key}=", 1)[1].split()[0]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                                      ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"]],
                         ids=["joblib", "submitit_local"])
def test_two_job_sweep_has_one_parent_with_the_summary(tmp_path, cache_dir, tiny_checkpoint, launcher):
    """Two evaluation jobs launched in parallel processes: one parent, two children, the summary."""
    sweep([*launcher, *TINY, "mode=eval", "task.max_new_tokens=4,8"], tmp_path, cache_dir)
    client, parent, children = parent_and_children()
    assert_summary(client, parent, children, ["task.max_new_tokens"], "test/accuracy", jobs=2)


@pytest.mark.slow
def test_optuna_study_is_the_parent_with_the_best_trial(tmp_path, cache_dir, tiny_checkpoint):
    """The quickstart's study, shortened to 3 one-epoch trials: the trials are the parent's children,
    the best trial's values are best_* params on the parent, as Optuna reports them."""
    out = sweep(["+experiment=quickstart_optuna", "hydra.sweeper.n_trials=3", *TINY, "train.epochs=1"], tmp_path,
                cache_dir)
    client, parent, children = parent_and_children()
    assert_summary(client, parent, children, ["train.lr", "train.lora.r"], "test/early_fire_score", jobs=3)
    assert f"Best value: {parent.data.metrics['sweep/best']}" in out
    assert parent.data.params["sweep_direction"] == "maximize"


@pytest.mark.slow
def test_a_failed_job_stops_the_sweep_and_the_parent_ends_failed_with_the_summary(tmp_path, cache_dir,
                                                                                  tiny_checkpoint):
    """Job 0 evaluates, job 1 names a data folder that does not exist: the sweep stops with the job's
    one-line error, and the parent ends FAILED (not RUNNING) with the summary of what ran."""
    out = sweep([*TINY, "mode=eval", "task.max_new_tokens=4", f"data.root=null,{tmp_path / 'nowhere'}"], tmp_path,
                cache_dir, code=2)
    assert "error: " in out and "Traceback" not in out
    client, parent, children = parent_and_children()
    assert parent.info.status == "FAILED"
    assert [c.info.status for c in children] == ["FINISHED"]
    assert parent.data.metrics["sweep/jobs"] == 1 and "sweep/best" in parent.data.metrics
    assert "sweep_summary.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_job_without_a_parent_file_runs_alone(tmp_path, caplog):
    """A sweep run without the callback: no parent is looked for or made by the job."""
    from vlmexp.tracking.mlflow_tracker import MlflowTracker

    tracker = MlflowTracker(experiment="alone")
    tracker.start("job", sweep=str(tmp_path))
    tracker.end()
    import mlflow

    run = mlflow.MlflowClient().get_run(tracker.run_id)
    assert "mlflow.parentRunId" not in run.data.tags and "no sweep parent run" in caplog.text
    assert len(mlflow.MlflowClient().search_runs([run.info.experiment_id])) == 1


def test_slurm_presets_compose_with_site_values_from_the_environment(monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from vlmexp.config.schema import register_configs
    from vlmexp.paths import conf_dir

    register_configs()
    GlobalHydra.instance().clear()
    monkeypatch.setenv("VLMEXP_SLURM_PARTITION", "a100")
    monkeypatch.delenv("VLMEXP_SLURM_ACCOUNT", raising=False)
    for option, partition, gpus in (("slurm", "a100", 1), ("slurm_cpu", "cpu", 0)):
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"hydra/launcher={option}"], return_hydra_config=True)
        launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
        assert launcher["_target_"].endswith("SlurmLauncher")
        assert launcher["gpus_per_node"] == gpus and launcher["array_parallelism"] > 1
        assert OmegaConf.select(cfg, "hydra.launcher.partition") == partition
        assert OmegaConf.select(cfg, "hydra.launcher.account") is None
