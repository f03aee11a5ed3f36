"""Files a rerun reads survive a kill at any point: the predictions store cut at every byte of its
last record, atomic file writes, and the checkpoint folder swap killed at every step."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

import pytest

from tests.helpers import ScriptedEngine
from vlmexp.atomic import write_text_atomic
from vlmexp.evaluation.loop import PredictionLoop
from vlmexp.evaluation.store import PredictionStore
from vlmexp.messages import ChatRequest, TextPart, chat
from vlmexp.paths import build_once
from vlmexp.trainers import state


@dataclass
class Item:
    id: str


class EchoTask:
    """The least a task needs for the loop: one record per sample, answered by the engine."""

    def predict(self, engine, samples):
        requests = [ChatRequest(chat(None, TextPart(f"q-{s.id}"))) for s in samples]
        return [{"id": s.id, "text": g.text, "note": "naïve café ☕", "error": None}
                for s, g in zip(samples, engine.generate(requests))]


SAMPLES = [Item("a"), Item("b"), Item("c")]


def full_store(path) -> bytes:
    store = PredictionStore(path)
    store.append(EchoTask().predict(ScriptedEngine(default="yes"), SAMPLES[:2]))
    return path.read_bytes()


def test_a_torn_last_record_is_redone_at_every_byte_offset(tmp_path):
    whole = full_store(tmp_path / "whole.jsonl")
    last_start = whole.rindex(b"\n", 0, len(whole) - 1) + 1
    for cut in range(last_start, len(whole) + 1):
        path = tmp_path / f"cut-{cut}.jsonl"
        path.write_bytes(whole[:cut])
        engine = ScriptedEngine(default="yes")
        records = PredictionLoop(batch_size=2).run(EchoTask(), engine, SAMPLES, PredictionStore(path))
        assert [r["id"] for r in records] == ["a", "b", "c"], cut
        lines = path.read_bytes().splitlines()
        ids = [json.loads(line)["id"] for line in lines]
        assert sorted(ids) == ["a", "b", "c"], (cut, ids)  # every record exactly once, none glued
        asked = [r.messages[-1].text for r in engine.calls]
        assert asked == (["q-c"] if cut >= len(whole) - 1 else ["q-b", "q-c"]), cut


def test_the_repair_keeps_every_complete_line(tmp_path):
    path = tmp_path / "p.jsonl"
    whole = full_store(path)
    path.write_bytes(whole + b'{"id": "c", "te')
    PredictionStore(path).repair_tail()
    assert path.read_bytes() == whole
    path.write_bytes(whole[:-1])  # only the newline was lost: the record is whole
    PredictionStore(path).repair_tail()
    assert path.read_bytes() == whole
    path.write_bytes(b'{"id": "a"')  # a single torn line
    PredictionStore(path).repair_tail()
    assert path.read_bytes() == b""


def test_an_atomic_write_leaves_the_old_content_when_it_fails(tmp_path, monkeypatch):
    target = tmp_path / "work" / "mlflow_run_id"
    write_text_atomic(target, "old")

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["mlflow_run_id"]  # no temporary file left
    write_text_atomic(target, "new")
    assert target.read_text() == "new"


class Killed(BaseException):
    pass


def _swap_steps(monkeypatch, kill_at: int | None) -> list[str]:
    """Counts the swap's steps (writing, renaming, removing); raises Killed at step ``kill_at``."""
    steps: list[str] = []

    def step(name, real):
        def wrapped(*args):
            steps.append(name)
            if kill_at is not None and len(steps) - 1 == kill_at:
                raise Killed
            return real(*args)
        return wrapped

    monkeypatch.setattr(state, "_rename", step("rename", state._rename))
    monkeypatch.setattr(state, "_remove", step("remove", state._remove))
    monkeypatch.setattr(state, "fsync_tree", step("fsync", state.fsync_tree))
    return steps


def _writer(version: str):
    def write(folder):
        (folder / "weights.bin").write_text(version * 100)
        (folder / "progress.json").write_text(json.dumps({"version": version}))
    return write


def _current(target) -> str:
    folder = state._existing(target)
    assert folder is not None and (folder / "progress.json").is_file()
    version = json.loads((folder / "progress.json").read_text())["version"]
    assert (folder / "weights.bin").read_text() == version * 100  # complete, not mixed
    return version


def test_the_checkpoint_swap_survives_a_kill_at_every_step_even_twice(tmp_path, monkeypatch):
    steps = _swap_steps(monkeypatch, None)
    state._swap_in(tmp_path / "probe", _writer("v0"))
    state._swap_in(tmp_path / "probe", _writer("v1"))
    monkeypatch.undo()
    count = len(steps)
    assert count >= 5
    for first in range(count):
        for second in range(count):
            target = tmp_path / f"state-{first}-{second}"
            state._swap_in(target, _writer("v1"))
            for kill_at, version in ((first, "v2"), (second, "v3")):
                _swap_steps(monkeypatch, kill_at)
                with contextlib.suppress(Killed):  # a swap with fewer steps than kill_at completes
                    state._swap_in(target, _writer(version))
                monkeypatch.undo()
                assert _current(target) in {"v1", "v2", "v3"}, (first, second)
            state._swap_in(target, _writer("v4"))
            assert _current(target) == "v4"
            assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(target.name)) == [target.name]


def test_build_once_syncs_before_it_names_the_folder(tmp_path, monkeypatch):
    import vlmexp.atomic

    synced = []
    real = vlmexp.atomic.fsync_tree
    monkeypatch.setattr(vlmexp.atomic, "fsync_tree", lambda folder: (synced.append(folder), real(folder)))

    def build(folder):
        (folder / "data.txt").write_text("x")

    target = build_once(tmp_path / "built", build)
    assert (target / "data.txt").read_text() == "x"
    assert len(synced) == 1 and synced[0] != target


def test_a_new_sqlite_store_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    import mlflow

    from vlmexp.tracking import sqlite_store

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"

    def killed(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(sqlite_store.os, "link", killed)
        with pytest.raises(KeyboardInterrupt):
            sqlite_store.prepare_sqlite_store(uri)
    assert not (tmp_path / "store" / "mlflow.db").exists()  # no half-made store for the next run to trip on
    sqlite_store.prepare_sqlite_store(uri)
    assert [e.name for e in mlflow.MlflowClient(uri).search_experiments()] == ["Default"]
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["mlflow.db"]  # no temporary file is left
    (tmp_path / "empty.db").write_bytes(b"")  # an empty file (touch) is made a store in one step too
    sqlite_store.prepare_sqlite_store(f"sqlite:///{tmp_path / 'empty.db'}")
    assert [e.name for e in mlflow.MlflowClient(f"sqlite:///{tmp_path / 'empty.db'}").search_experiments()] == [
        "Default"]


@pytest.mark.parametrize(("content", "message"), [
    (b"SQLite format 3\x00" + b"\x00" * 200, "not a usable MLflow store"),
    (None, "an MLflow store left half-created (1 tables"),
    ("migration-cut-short", "the MLflow store does not open (Detected out-of-date database schema"),
])
def test_a_damaged_sqlite_store_is_one_line_before_any_run(tmp_path, content, message):
    import sqlite3

    from tests.conftest import run_cli

    db = tmp_path / "damaged.db"
    if content is None:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.execute("CREATE TABLE trace_info (request_id TEXT)")
    elif content == "migration-cut-short":  # every table there, the schema stopped at an old revision
        import mlflow

        mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.execute("UPDATE alembic_version SET version_num = '451aebb31d03'")
            conn.commit()
    else:
        db.write_bytes(content)
    result = run_cli(["mode=eval", "engine._target_=tests.helpers.ScriptedEngine", f"paths.cache_dir={tmp_path}"],
                     cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"}, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"error: {db}: {message}"), result.stderr


def test_a_store_whose_writer_was_killed_mid_transaction_opens(tmp_path):
    """SIGKILL in the middle of a write leaves a hot journal beside the store; the start-up check
    rolls it back instead of refusing the store."""
    import subprocess
    import sys

    import mlflow

    from vlmexp.tracking.sqlite_store import prepare_sqlite_store

    db = tmp_path / "mlflow.db"
    prepare_sqlite_store(f"sqlite:///{db}")
    writer = ("import os, sqlite3, sys\n"
              "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "db.execute('PRAGMA journal_mode=DELETE')\n"
              "db.execute('BEGIN IMMEDIATE')\n"
              "db.execute(\"UPDATE experiments SET name = 'half-written'\")\n"
              "db.execute('CREATE TABLE filler (x)')\n"
              "db.executemany('INSERT INTO filler VALUES (?)', [(b'x' * 4096,)] * 2000)\n"
              "os._exit(0)  # dies holding the transaction, as a SIGKILL would leave it\n")
    subprocess.run([sys.executable, "-c", writer, str(db)], check=True)
    assert (tmp_path / "mlflow.db-journal").exists()  # the hot journal a killed writer leaves
    prepare_sqlite_store(f"sqlite:///{db}")  # no "attempt to write a readonly database"
    assert [e.name for e in mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()] == ["Default"]
