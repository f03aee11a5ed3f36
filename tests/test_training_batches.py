"""Training batches built in DataLoader worker processes (train.num_workers): the same training as in
the training process, unreadable images counted, errors one line naming the example."""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import compose_config
from tests.vqa_helpers import BACKGROUND_QUESTION, write_jsonl, write_split
from vlmexp.config.validate import validate
from vlmexp.errors import ConfigError, DataError
from vlmexp.provenance import config_fingerprint
from vlmexp.runner import RunContext
from vlmexp.tasks.base import TrainingExample
from vlmexp.tracking.null import NullTracker
from vlmexp.trainers.batches import SkippedExamples, SkippingCollate, TrainingExamples, loader_workers, worker_count
from vlmexp.trainers.sft import SFTTrainer


def _record_pid(folder: Path, build, request, answer):
    (folder / f"{os.getpid()}.pid").touch()
    return build(request, answer)


class PidRecordingTrainer(SFTTrainer):
    """The real trainer; every process that builds a training example leaves its pid in ``folder``."""

    def __init__(self, folder: Path):
        self.folder = folder

    def setup(self, run, task, splits):
        module = super().setup(run, task, splits)
        self.train_set.build = partial(_record_pid, self.folder, self.train_set.build)
        return module


@pytest.fixture(scope="module")
def vqa_with_truncated_image(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa-workers")
    train, val = write_split(root, "train", 6, seed=1), write_split(root, "val", 2, seed=2)
    (root / "truncated.png").write_bytes((root / "train" / "img000.png").read_bytes()[:60])
    write_jsonl(train, [*train.read_text().splitlines(),
                        f'{{"image_path": "truncated.png", "question": "{BACKGROUND_QUESTION}", "answer": "dark"}}'])
    return train, val


def _train(tmp_path, cache_dir, data, workers: int):
    train, val = data
    cfg = compose_config(["task=vqa", "model=tiny", "hardware=cpu", "mode=train", f"paths.cache_dir={cache_dir}",
                          f"data.train_file={train}", f"data.val_file={val}", "train.epochs=2",
                          "train.batch_size=3", "train.lr=5e-3", f"train.num_workers={workers}"])
    task = instantiate(cfg.task, _recursive_=False)
    work = tmp_path / f"workers{workers}"
    (work / "pids").mkdir(parents=True)
    ctx = RunContext(cfg, work / "output", work, NullTracker(), "test")
    result = PidRecordingTrainer(work / "pids").fit(ctx, task, task.load_splits(ctx))
    pids = {int(p.stem) for p in (work / "pids").iterdir()}
    weights = {n: p.detach().clone() for n, p in result.model.named_parameters() if p.requires_grad}
    return result, pids, weights


def test_batches_built_in_worker_processes_train_exactly_as_in_the_training_process(tmp_path, cache_dir,
                                                                                     tiny_checkpoint,
                                                                                     vqa_with_truncated_image):
    here, here_pids, here_weights = _train(tmp_path, cache_dir, vqa_with_truncated_image, workers=0)
    forked, forked_pids, forked_weights = _train(tmp_path, cache_dir, vqa_with_truncated_image, workers=2)
    assert here_pids == {os.getpid()}
    assert os.getpid() not in forked_pids and len(forked_pids) >= 2  # two workers per epoch, new each epoch
    assert forked.history == here.history  # every training and validation loss, exactly
    assert len(here.history["val"]) == 2 and len(here.history["train"]) >= 8  # 13 examples in batches of 3
    assert len(here.unreadable) == 1 and forked.unreadable == here.unreadable
    assert all(torch.equal(forked_weights[n], here_weights[n]) for n in here_weights)


def _example(id_: str, answer: str) -> TrainingExample:
    return TrainingExample(id_, lambda: (f"request {id_}", answer))


def _build(request, answer: str):
    if answer == "bad":
        raise DataError("the answer cannot be rendered")
    if answer == "unreadable":
        from vlmexp.data.images import UnreadableImage

        raise UnreadableImage(f"{request}: truncated")
    return torch.tensor([len(answer)])


def _collate(items):
    return {"lengths": torch.cat(items)}


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_examples_are_counted_once_and_named_once_in_the_log(workers, caplog):
    examples = [_example("a", "yes"), _example("b", "unreadable"), _example("c", "no"), _example("d", "unreadable")]
    loader = torch.utils.data.DataLoader(TrainingExamples(examples, _build), batch_size=2,
                                         collate_fn=SkippingCollate(_collate), **loader_workers(workers, "cpu"))
    skipped = SkippedExamples()
    with caplog.at_level(logging.WARNING, logger="vlmexp.trainers.batches"):
        for _ in range(2):  # two epochs
            batches = [batch["lengths"].tolist() for batch in skipped.batches(loader)]
            assert batches == [[3], [2]]
    assert skipped.ids == {"b", "d"}
    assert [r.getMessage() for r in caplog.records] == ["skipping unreadable training image: request b: truncated",
                                                        "skipping unreadable training image: request d: truncated"]


@pytest.mark.parametrize("workers", [0, 1])
def test_an_error_building_an_example_is_one_line_naming_the_example(workers):
    examples = [_example("a", "yes"), _example("b", "yes"), _example("c", "bad")]
    loader = torch.utils.data.DataLoader(TrainingExamples(examples, _build), batch_size=2,
                                         collate_fn=SkippingCollate(_collate), **loader_workers(workers, "cpu"))
    batches = SkippedExamples().batches(loader)
    assert next(batches)["lengths"].tolist() == [3, 3]
    with pytest.raises(DataError) as err:
        next(batches)
    assert str(err.value) == "training example c: the answer cannot be rendered"


def test_workers_are_checked_and_change_no_fingerprint():
    cfg = compose_config(["task=vqa", "model=tiny", "train.num_workers=-1"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value) == ("train.num_workers=-1: must be >= 0 (0 reads the examples in the training process) "
                              "or null (one worker where a core is left for it)")
    fingerprints = {config_fingerprint(compose_config(["task=vqa", "model=tiny", f"train.num_workers={n}"]), mode)
                    for n in ("null", 0, 1, 4) for mode in ("train", "train_eval")}
    assert len(fingerprints) == 2  # one per mode
    assert fingerprints != {config_fingerprint(compose_config(["task=vqa", "model=tiny", "train.lr=1e-3"]), "train")}


def test_null_workers_start_one_only_where_a_core_is_left_for_it(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert (worker_count(None, "cpu"), worker_count(None, "cuda"), worker_count(3, "cpu")) == (0, 1, 3)
        torch.set_num_threads(3)
        assert worker_count(None, "cpu") == 1
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two training processes of 3 threads on 4 cores
        assert worker_count(None, "cpu") == 0
        monkeypatch.delenv("LOCAL_WORLD_SIZE")
        assert loader_workers(None, "cpu") == {"num_workers": 1, "multiprocessing_context": "fork"}
        assert loader_workers(0, "cuda") == {"num_workers": 0}
    finally:
        torch.set_num_threads(threads)
