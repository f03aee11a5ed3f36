"""The generic evaluation loop: batches samples through a task and an engine, resumably."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from tqdm.auto import tqdm

from vlmexp.evaluation.prefetch import predict_batches
from vlmexp.evaluation.store import PredictionStore

log = logging.getLogger(__name__)


class PredictionLoop:
    """Runs ``task.predict(engine, batch)`` over the samples not yet in the store.

    Every finished batch is appended to the store before the next one reaches the engine, so a crash
    or kill loses at most one batch's answers, and rerunning the same command carries on where it
    stopped. Records with an ``error`` (the engine gave up on the request, e.g. its server was
    gone) are sent again on rerun.
    The next batch's requests are built (and encoded, for engines that can) while the engine answers
    the current one (:mod:`vlmexp.evaluation.prefetch`); the engine sees the same calls in the same
    order as without that overlap.
    """

    def __init__(self, batch_size: int | None = None):
        self.batch_size = batch_size
        self.reused = 0  # predictions of the last run() taken from the store instead of the engine

    def run(self, task, engine, samples: Sequence, store: PredictionStore, desc: str = "evaluate") -> list[dict]:
        done = store.load()
        todo = [s for s in samples if s.id not in done or done[s.id].get("error")]
        self.reused = len(samples) - len(todo)
        if self.reused:
            resuming = f"resuming, {self.reused} of {len(samples)} samples already done: " if todo else ""
            log.info("%s: %sreusing %d of %d predictions from %s", desc, resuming, self.reused, len(samples),
                     store.path)

        def batch_size() -> int:
            # Asked for each batch: an engine may lower its batch size (after running out of memory).
            return self.batch_size or engine.preferred_batch_size()

        with tqdm(total=len(samples), initial=len(samples) - len(todo), desc=desc, unit="sample",
                  dynamic_ncols=True) as bar:
            began = time.perf_counter()
            for batch, records in predict_batches(task, engine, todo, batch_size):
                for record in records:  # each record's share of the batch's wall time: throughput
                    record["wall_s"] = (time.perf_counter() - began) / max(1, len(records))
                store.append(records)
                bar.update(len(batch))
                began = time.perf_counter()
        done = store.load()
        return [done[s.id] for s in samples]
