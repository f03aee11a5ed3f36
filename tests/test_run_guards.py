"""What stops a run before it opens a tracking run: another process on the same work dir (a file
lock naming its PID), a server that is down, an unwritable cache dir, too little disk to train."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest

from tests.conftest import compose_config, run_cli
from tests.fake_servers import closed_port
from tests.test_runner import eval_overrides
from vlmexp.errors import ConfigError, RunLocked
from vlmexp.runlock import LOCK_FILE, RunLock
from vlmexp.runner import run

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
print("locked", flush=True)
time.sleep(120)
"""


def all_runs():
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_a_second_process_on_the_same_work_dir_stops_at_once(cache_dir, tmp_path):
    args = eval_overrides(cache_dir, tmp_path, "data.limit=2", "seed=11")
    run(compose_config(args), output_dir=tmp_path / "first")
    (done,) = all_runs()
    work_dir = done.data.tags["vlmexp.work_dir"]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, f"{work_dir}/{LOCK_FILE}"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run_cli(args, cwd=tmp_path, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: another run of this config is in progress (PID {holder.pid}, lock {work_dir}/")
    assert len(all_runs()) == 1  # the refused run logged nothing
    again = run_cli(args, cwd=tmp_path, timeout=300)  # the holder is gone: the lock is free
    assert again.returncode == 0, again.stderr[-2000:]


def test_the_lock_is_per_open_file_and_released(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunLocked, match=r"PID \d+"):
        RunLock(tmp_path).acquire()
    first.release()
    RunLock(tmp_path).acquire().release()


def test_a_forked_child_does_not_keep_the_lock_of_its_killed_parent(tmp_path):
    """A DataLoader worker is a forked child; when the run is killed, the lock must go with the run."""
    lock = RunLock(tmp_path).acquire()
    read, write = os.pipe()
    ready_read, ready_write = os.pipe()
    child = os.fork()
    if child == 0:  # the child waits until told to go, as a worker does until it notices its parent died
        os.close(write)
        os.write(ready_write, b"1")
        os.read(read, 1)
        os._exit(0)
    os.close(read)
    os.read(ready_read, 1)  # the child is running
    try:
        os.close(lock._fd)  # what the kernel does when the parent dies: its descriptor closes, no unlock
        RunLock(tmp_path).acquire().release()  # free although the child lives
    finally:
        os.close(write)
        os.waitpid(child, 0)
        os.close(ready_read)
        os.close(ready_write)


def test_ollama_down_stops_before_any_tracking_run(cache_dir, tmp_path):
    port = closed_port()
    result = run_cli(["task=smoke", "model=qwen7b", "mode=eval", f"paths.cache_dir={cache_dir}", "data.limit=2",
                      "engine=ollama", f"engine.host=http://127.0.0.1:{port}"], cwd=tmp_path, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: cannot reach the Ollama server at http://127.0.0.1:{port}: connection refused; start it with "
        "`ollama serve`, or set OLLAMA_HOST (or engine.host) to a running one"]
    assert all_runs() == []


def test_unwritable_cache_dir_is_one_line_before_any_run(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = compose_config(["task=smoke", "mode=eval", "engine._target_=tests.helpers.ScriptedEngine",
                          f"paths.cache_dir={blocker}/cache"])
    with pytest.raises(ConfigError, match=rf"^paths.cache_dir={blocker}/cache: cannot write there"):
        run(cfg, output_dir=tmp_path / "out")
    assert all_runs() == []


def test_too_little_disk_to_train_is_one_line_before_any_run(cache_dir, tiny_checkpoint, tmp_path):
    cfg = compose_config(["task=smoke", "model=tiny", "mode=train", f"paths.cache_dir={cache_dir}",
                          "paths.min_free_gb=1000000", "hardware=cpu"])
    with pytest.raises(ConfigError, match=r"GiB free, training needs at least 1e\+06 GiB for checkpoints"):
        run(cfg, output_dir=tmp_path / "out")
    assert all_runs() == []


def test_missing_data_root_is_one_line_before_any_run(tmp_path):
    result = run_cli(["task=smoke", "mode=eval", "engine._target_=tests.helpers.ScriptedEngine",
                      f"data.root={tmp_path / 'nowhere'}", f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path,
                     timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: data.root={tmp_path / 'nowhere'}: no such file or folder"]
    assert all_runs() == []
