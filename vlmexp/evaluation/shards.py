"""Data-parallel evaluation: every process of a run answers its share of the samples into a crash-safe
file of its own (``predictions.rank<N>.jsonl``); the main process folds those files into the run's
``predictions.jsonl``, so each sample has one record whatever was killed and rerun, and with however
many processes the rerun has.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from vlmexp import distributed
from vlmexp.errors import VlmexpError
from vlmexp.evaluation.store import PredictionStore

log = logging.getLogger(__name__)


def shard_files(main_file: Path) -> list[Path]:
    return sorted(main_file.parent.glob(f"{main_file.stem}.rank*{main_file.suffix}"))


def fold_shards(main_file: Path) -> None:
    """Move the records of the shard files into ``main_file`` (rewritten whole, atomically), then remove
    them. A shard's answer replaces a record that failed (``error``); never a good one by a failed one."""
    shards = shard_files(main_file)
    if not shards:
        return
    store = PredictionStore(main_file)
    records = store.load()
    for shard in shards:
        for sample_id, record in PredictionStore(shard).load().items():
            if sample_id not in records or records[sample_id].get("error") or not record.get("error"):
                records[sample_id] = record
    store.rewrite(records.values())
    for shard in shards:
        shard.unlink()


def evaluate_shared(loop, task, engine, samples: Sequence, main_file: Path,
                    desc: str = "evaluate") -> tuple[list[dict] | None, int]:
    """Run ``loop`` over this process's share of the samples not answered yet; the records of every
    sample, in order, in the main process (None in the others), and how many were reused."""
    if distributed.world_size() == 1:
        fold_shards(main_file)  # left by a run of several processes that was killed
        records = loop.run(task, engine, samples, PredictionStore(main_file), desc=desc)
        return records, getattr(loop, "reused", 0)
    with distributed.main_first():
        if distributed.is_main():
            fold_shards(main_file)
    done = PredictionStore(main_file).load()  # every process sees the same file: the shares agree
    todo = [s for s in samples if s.id not in done or done[s.id].get("error")]
    if distributed.is_main() and len(todo) < len(samples):
        log.info("%s: resuming, %d of %d samples already done; %d processes share the rest", desc,
                 len(samples) - len(todo), len(samples), distributed.world_size())
    mine = todo[distributed.rank()::distributed.world_size()]
    own = main_file.with_name(f"{main_file.stem}.rank{distributed.rank()}{main_file.suffix}")
    loop.run(task, engine, mine, PredictionStore(own), desc=desc)
    distributed.barrier()
    if not distributed.is_main():
        return None, 0
    fold_shards(main_file)
    store = PredictionStore(main_file)
    done = store.load()
    missing = [s.id for s in samples if s.id not in done]
    if missing:  # a process answered nothing for them: never report metrics over part of the set
        raise VlmexpError(f"{main_file}: no prediction for {len(missing)} samples ({missing[:3]}) after the "
                           "evaluation; rerun the same command to answer them")
    records = [done[s.id] for s in samples]
    ids = {s.id for s in samples}
    store.rewrite(records + [r for sample_id, r in done.items() if sample_id not in ids])  # in sample order
    return records, len(samples) - len(todo)
