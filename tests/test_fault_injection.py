"""Fault injection: real ``python -m vlmexp`` processes killed with SIGKILL at random instants of an
evaluation and of a fine-tuning run, each rerun until it finishes; the outcome must equal an
uninterrupted run's: the same predictions, the same metrics, one MLflow run with each step once.

The instants come from a seeded generator; a failure names the seed, and ``--fault-seed N`` replays
it. Each series starts from an empty cache, so kills also land in building the tiny model and
generating the dataset.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.faults

KILLS = 5  # SIGKILLs per series
RUN_LIMIT_S = 300  # no single process may take longer (a hang fails the test)
# metrics that measure time or the machine (system/: MLflow's monitor), not results
TIMED = re.compile(r"wall|latency|throughput|tokens_per_s|^system/")


@dataclass
class Series:
    """One experiment run again and again in its own cache and MLflow store."""

    folder: Path
    args: list[str]
    kills: list[float] = field(default_factory=list)  # seconds after start of each SIGKILL that landed
    starts: int = 0

    @property
    def cache(self) -> Path:
        return self.folder / "cache"

    def start(self) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=f"sqlite:///{self.folder / 'mlflow.db'}")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        log = (self.folder / f"run-{self.starts}.log").open("w")
        return subprocess.Popen([sys.executable, "-m", "vlmexp", *self.args, f"paths.cache_dir={self.cache}"],
                                cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT)

    def run_to_end(self) -> float:
        began = time.monotonic()
        process = self.start()
        code = process.wait(timeout=RUN_LIMIT_S)
        assert code == 0, self.last_log()
        return time.monotonic() - began

    def kill_at(self, instant: float) -> bool:
        """Start a run and SIGKILL it ``instant`` s later; False when it finished first."""
        process = self.start()
        try:
            process.wait(timeout=instant)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            self.kills.append(round(instant, 2))
            return True
        assert process.returncode == 0, self.last_log()
        return False

    def last_log(self) -> str:
        return (self.folder / f"run-{self.starts}.log").read_text()[-4000:]

    def finished(self, task: str) -> bool:
        """Whether a run already ended: a kill can land after the run is done, while the process exits
        (a rerun then would be a new run that reuses every prediction, as documented). Read with
        sqlite3, read-only: opening the store with MLflow would create it."""
        db = self.folder / "mlflow.db"
        if not db.exists():
            return False
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            try:
                rows = conn.execute("SELECT 1 FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                                    "WHERE e.name = ? AND r.status = 'FINISHED'", (task,)).fetchall()
            except sqlite3.OperationalError:  # no tables yet
                return False
        return bool(rows)

    def work_dir(self, task: str) -> Path:
        (work,) = (self.cache / "runs" / task).iterdir()
        return work

    def outcome(self, task: str) -> tuple[list[dict], dict, dict]:
        """Predictions without timings, untimed metrics, and each metric's logged steps."""
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{self.folder / 'mlflow.db'}")
        [experiment] = [e for e in client.search_experiments() if e.name == task]
        runs = client.search_runs([experiment.experiment_id])
        assert [r.info.status for r in runs] == ["FINISHED"], [r.info.status for r in runs]  # resumed, not repeated
        [found] = runs
        metrics = {k: v for k, v in found.data.metrics.items() if not TIMED.search(k)}
        steps = {k: [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, k)]
                 for k in metrics}
        # the series' own folder is left out of the paths the records name
        text = (self.work_dir(task) / "predictions.jsonl").read_text().replace(str(self.folder), "")
        predictions = sorted(({k: v for k, v in json.loads(line).items() if k not in ("latency_s", "wall_s")}
                              for line in text.splitlines()), key=lambda r: r["id"])
        return predictions, metrics, steps


@pytest.fixture
def fault_seed(request) -> int:
    seed = request.config.getoption("--fault-seed")
    return int(seed) if seed is not None else random.SystemRandom().randrange(10_000)


def started_work_after(series: Series, task: str, began_wall: float) -> float:
    """Seconds from a run's start until its work folder existed: the end of start-up."""
    return max(0.0, (series.work_dir(task) / "inputs.json").stat().st_mtime - began_wall)


def inject(reference: Series, victim: Series, task: str, seed: int) -> None:
    began_wall = time.time()
    total = reference.run_to_end()
    working = started_work_after(reference, task, began_wall)
    rng = random.Random(seed)
    # Every other kill lands in start-up (imports, model build, data generation), the first of them
    # too, so at least one kill lands however fast the victim runs; the others while it works, each
    # within the first 60 % of the work (a rerun redoes only what is left).
    span = total - working
    instants = [rng.uniform(working, working + 0.6 * span) if k % 2 else rng.uniform(0.2, working)
                for k in range(KILLS)]
    for instant in instants:
        if not victim.kill_at(instant) or victim.finished(task):
            break  # it finished before this kill landed: nothing was left to do
    else:
        victim.run_to_end()
    context = (f"fault seed {seed}: SIGKILL after {victim.kills} s (uninterrupted run {total:.1f} s, "
               f"work began after {working:.1f} s)")
    print(context)
    want_predictions, want_metrics, want_steps = reference.outcome(task)
    got_predictions, got_metrics, got_steps = victim.outcome(task)
    assert got_predictions == want_predictions, context
    assert got_metrics.keys() == want_metrics.keys(), context
    for key, want in want_steps.items():
        got = got_steps[key]
        assert [s for s, _ in got] == [s for s, _ in want], f"{context}: steps of {key}"
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-5, abs=1e-7), f"{context}: {key}"
    assert victim.kills, f"{context}: no kill landed"


def test_evaluation_killed_at_random_instants_ends_as_if_never_stopped(tmp_path, fault_seed):
    answers = ['{"has_smoke": true, "bbox": [0.5, 0.5, 0.3, 0.3]}', '{"has_smoke": false}', "not json",
               '{"has_smoke": true, "bbox": [0.2, 0.7, 0.1, 0.2], "confidence": 0.6}']
    args = ["task=smoke", "mode=eval", "engine._target_=tests.helpers.ScriptedEngine", "+engine.sleep_s=0.05",
            "engine.batch_size=4", f"+engine.varied={json.dumps(answers)}"]
    inject(Series(tmp_path / "reference", args), Series(tmp_path / "killed", args), "smoke", fault_seed)


def test_training_killed_at_random_instants_ends_as_if_never_stopped(tmp_path, fault_seed):
    from tests.vqa_helpers import write_split

    train, val = write_split(tmp_path, "train", 12, seed=1), write_split(tmp_path, "val", 2, seed=2)
    args = ["task=vqa", "model=tiny", "hardware=cpu", "mode=train_eval", f"data.train_file={train}",
            f"data.val_file={val}", "train.batch_size=4", "train.epochs=4", "train.lr=2e-2", "task.max_new_tokens=4"]
    reference, victim = Series(tmp_path / "reference", args), Series(tmp_path / "killed", args)
    inject(reference, victim, "vqa", fault_seed)
    from safetensors.torch import load_file

    want, got = (load_file(s.work_dir("vqa") / "train_state" / "trainable.safetensors") for s in (reference, victim))
    assert want.keys() == got.keys()
    assert all((want[name] - got[name]).abs().max() <= 1e-6 for name in want), f"fault seed {fault_seed}"
