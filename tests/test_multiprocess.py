"""Several processes of one run, on CPU (gloo): real ``accelerate launch`` and ``torchrun`` processes
training and evaluating the tiny model, compared with one process doing the same work.

Every launch runs in its own process group with a hard time limit: a process group that hangs is
killed and fails the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

LIMIT_S = 300
TIMED = ("latency_s", "wall_s")  # fields of a record that measure time, not results

SMOKE = ["task=smoke", "model=tiny", "hardware=cpu", "data.synthetic.train_sequences=4",
         "data.synthetic.val_sequences=2", "data.synthetic.test_sequences=2", "train.epochs=2"]
BINARY = ["task=binary", "model=tiny", "hardware=cpu", "data.synthetic.train=16", "data.synthetic.val=8",
          "data.synthetic.test=8", "train.epochs=3", "task.head.dropout=0.0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(processes: int, launcher: str = "accelerate") -> list[str]:
    """``python -m vlmexp``, or one of the launchers with ``processes`` processes. On a machine without
    GPUs, ``accelerate launch --multi_gpu`` starts them through torchrun with the gloo backend
    (``--cpu --num_processes N`` alone starts a single process: multi-CPU there means mpirun)."""
    if processes == 1:
        return [sys.executable, "-m", "vlmexp"]
    bin_dir = Path(sys.executable).parent
    if launcher == "torchrun":
        return [str(bin_dir / "torchrun"), "--nproc_per_node", str(processes), "--master_port", str(_free_port()),
                "-m", "vlmexp"]
    return [str(bin_dir / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), "-m", "vlmexp"]


class Launch:
    """One experiment folder (its own cache and MLflow store), launched as one or more processes."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.count = 0

    @property
    def store(self) -> str:
        return f"sqlite:///{self.folder / 'mlflow.db'}"

    def start(self, args: list[str], processes: int, launcher: str = "accelerate") -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=self.store, OMP_NUM_THREADS="1")
        self.count += 1
        self.log = self.folder / f"launch-{self.count}.log"
        return subprocess.Popen([*command(processes, launcher), *args, f"paths.cache_dir={self.folder / 'cache'}"],
                                cwd=self.folder, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)

    def run(self, args: list[str], processes: int, launcher: str = "accelerate") -> str:
        process = self.start(args, processes, launcher)
        code = wait(process)
        out = self.log.read_text()
        assert code == 0, out[-5000:]
        return out

    def work_dir(self, task: str) -> Path:
        (work,) = (self.folder / "cache" / "runs" / task).iterdir()
        return work

    def predictions(self, task: str) -> list[dict]:
        # the folder of the launch is left out of the paths the records name
        lines = (self.work_dir(task) / "predictions.jsonl").read_text().replace(str(self.folder), "").splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in TIMED} for line in lines]

    def only_run(self, task: str):
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=self.store)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert [r.info.status for r in runs] == ["FINISHED"], [r.info.status for r in runs]
        return client, runs[0]


def wait(process: subprocess.Popen, limit: float = LIMIT_S) -> int:
    """The exit code; past ``limit`` the whole process group is killed and the test fails."""
    try:
        return process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"a launch did not end within {limit} s (a hung process group?)")


def history(client, run, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]


def assert_one_run_of_the_main_process(launch: Launch, task: str, out: str, test_size: int):
    """One MLflow run with each metric step once, one run folder per launch, one checkpoint, each sample once."""
    client, run = launch.only_run(task)
    for key in run.data.metrics:
        steps = [s for s, _ in history(client, run, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {steps}"
    assert out.count("metric ") == 1  # the table, printed by the main process alone
    assert len(list((launch.folder / "outputs" / task).iterdir())) == launch.count  # the main process's, one a launch
    work = launch.work_dir(task)
    assert (work / "checkpoint").is_dir() and not list(work.glob("predictions.rank*"))
    ids = [r["id"] for r in launch.predictions(task)]
    assert len(ids) == len(set(ids)) == test_size
    return client, run


@pytest.mark.slow
@pytest.mark.parametrize("task,args,test_size", [("smoke", SMOKE, 16), ("binary", BINARY, 8)])
def test_two_processes_train_as_one_process_with_the_same_global_batch(tmp_path, task, args, test_size):
    """SFT and the classifier head: 2 processes x 2 examples train like 1 process x 4 examples: the
    same train and validation losses, to 1e-4 relative (float sums taken in another order)."""
    one, two = Launch(tmp_path / "one"), Launch(tmp_path / "two")
    one.run([*args, "train.batch_size=4"], processes=1)
    if task == "smoke":  # SFT resumes after a kill: rank 1 killed once epoch 1 is saved, then the same command
        kill_rank_when(two, [*args, "train.batch_size=2"], 1, "cache/runs/smoke/*/train_state/progress.json")
    out = two.run([*args, "train.batch_size=2"], processes=2)
    if task == "smoke":
        assert "resuming training after epoch 1" in out
    client2, run2 = assert_one_run_of_the_main_process(two, task, out, test_size)
    client1, run1 = one.only_run(task)
    assert run2.data.params["train.effective_batch_size"] == run1.data.params["train.effective_batch_size"] == "4"
    for key in ("train/loss", "val/loss"):
        want, got = history(client1, run1, key), history(client2, run2, key)
        assert [s for s, _ in got] == [s for s, _ in want] and len(want) >= 2
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-4), key
    assert run2.data.metrics["val/best_epoch"] == run1.data.metrics["val/best_epoch"]


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _rank_pid(launcher_pid: int, rank: int) -> int | None:
    """The process of the launch (a descendant of ``launcher_pid``) whose RANK is ``rank``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            pid = int(entry.name)
            while pid > 1 and pid != launcher_pid:
                pid = _parent(pid)
        except (OSError, ValueError, IndexError):
            continue
        if pid == launcher_pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def kill_rank_when(launch: Launch, args: list[str], rank: int, pattern: str, lines: int = 0,
                   launcher: str = "accelerate") -> Path:
    """Launch 2 processes; SIGKILL rank ``rank`` once a file matching ``pattern`` exists (with ``lines``
    lines); the launcher then stops the other process. The file that was found."""
    process = launch.start(args, processes=2, launcher=launcher)
    found = None
    deadline = time.monotonic() + LIMIT_S
    while found is None and process.poll() is None and time.monotonic() < deadline:
        matches = list(launch.folder.glob(pattern))
        if matches and matches[0].read_text().count("\n") >= lines:
            found = matches[0]
            pid = _rank_pid(process.pid, rank)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    assert wait(process) != 0 and found is not None, "the launch ended before the kill"
    return found


@pytest.mark.slow
def test_evaluation_in_two_processes_killed_in_one_rank_resumes_to_the_one_process_predictions(tmp_path):
    """torchrun, 2 processes, the HF engine on the untrained tiny model (greedy, one sample per batch):
    rank 1 is killed mid-evaluation (torchrun then stops rank 0); the rerun answers only what is left
    and ends with exactly the predictions of one process, each sample once, in one MLflow run."""
    args = ["task=smoke", "model=tiny", "hardware=cpu", "mode=eval", "data.synthetic.train_sequences=1",
            "data.synthetic.val_sequences=1", "data.synthetic.test_sequences=4", "engine.batch_size=1",
            "task.max_new_tokens=16"]
    one = Launch(tmp_path / "one")
    one.run(args, processes=1)
    want = one.predictions("smoke")
    assert len(want) == 32

    two = Launch(tmp_path / "two")
    shard = kill_rank_when(two, args, 1, "cache/runs/smoke/*/predictions.rank1.jsonl", lines=2, launcher="torchrun")
    answered_before = shard.read_text().count("\n")
    assert 2 <= answered_before < 16  # killed mid-evaluation: part of its share is answered

    out = two.run(args, processes=2, launcher="torchrun")
    assert "resuming" in out
    assert_one_run_of_the_main_process_eval(two, out)
    assert two.predictions("smoke") == want  # same records, same order, each sample once
    _, run = two.only_run("smoke")
    assert int(run.data.tags["vlmexp.reused_predictions"]) >= answered_before


def assert_one_run_of_the_main_process_eval(launch: Launch, out: str) -> None:
    client, run = launch.only_run("smoke")
    assert out.count("metric ") == 1
    assert len(client.get_metric_history(run.info.run_id, "test/accuracy")) == 1
    assert not list(launch.work_dir("smoke").glob("predictions.rank*"))


@pytest.mark.parametrize("name,kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero2", "DEEPSPEED")])
def test_accelerate_config_files_load_with_accelerates_own_reader(name, kind):
    """The documented config files use accelerate's keys (its reader refuses an unknown one)."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "accelerate_configs" / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.num_processes > 1 and not config.use_cpu
