"""The next batch prepared while the engine answers the current one.

A task's ``predict`` builds requests (reads and resizes images), calls the engine, and turns the
answers into records; only the engine call needs the model. Each batch's ``predict`` runs in a worker
thread and sees a :class:`BatchEngine`: its ``generate``/``score`` calls are handed to the loop's
thread, which runs them in batch order, one batch after the other, exactly as a sequential loop
would. The next batch's ``predict`` starts as soon as the current one has handed its first call
over, so its images are read and, when the engine has a ``prepare(requests)`` method, encoded
(processor: resizing, tokenising) while the model answers the current batch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

_DONE = object()  # put on a batch's queue when its predict has returned (or raised)


class Cancelled(Exception):
    """Raised in a batch's worker thread when the loop stopped before the batch's turn."""


class _Call:
    def __init__(self, method: str, args: tuple):
        self.method, self.args = method, args
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None


class BatchEngine:
    """The engine as one batch's ``predict`` sees it: model calls go to the loop's thread."""

    def __init__(self, engine, calls: queue.Queue):
        self._engine = engine
        self._calls = calls
        self._cancelled = False

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    @property
    def __name__(self) -> str:  # messages naming "the engine" name the engine, not this wrapper
        return type(self._engine).__name__

    def generate(self, requests):
        return self._call("generate", requests)

    def score(self, requests, candidates):
        return self._call("score", requests, candidates)

    def _call(self, method: str, requests, *rest):
        prepare = getattr(self._engine, "prepare", None)
        if prepare is not None and requests and not self._cancelled:
            prepare(requests)
        if self._cancelled:
            raise Cancelled()
        call = _Call(method, (requests, *rest))
        self._calls.put(call)
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def cancel(self) -> None:
        self._cancelled = True


class _Batch:
    def __init__(self, pool: ThreadPoolExecutor, task, engine, samples: Sequence):
        self.samples = samples
        self.calls: queue.Queue = queue.Queue()
        self.engine = BatchEngine(engine, self.calls)
        self.future: Future = pool.submit(self._predict, task)

    def _predict(self, task) -> list[dict]:
        try:
            return task.predict(self.engine, self.samples)
        finally:
            self.calls.put(_DONE)

    def cancel(self) -> None:
        self.engine.cancel()
        while True:  # release a call handed over but not run
            try:
                call = self.calls.get_nowait()
            except queue.Empty:
                return
            if isinstance(call, _Call):
                call.error = Cancelled()
                call.done.set()


def predict_batches(task, engine, samples: Sequence,
                    batch_size: Callable[[], int]) -> Iterator[tuple[Sequence, list[dict]]]:
    """``(batch, task.predict(engine, batch))`` over consecutive batches of ``samples``, in order, each
    of ``batch_size()`` samples as asked when the batch is cut; the next batch's ``predict`` runs up to
    its first engine call while the current batch is answered. When the engine lowered its batch size
    meanwhile (out of memory), that next batch is dropped and cut again at the new size. Engine calls
    run in the calling thread (so Ctrl-C stops the model at once); an error of a batch is raised
    here, after which no later batch reaches the engine."""
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vlmexp-predict")
    position = 0

    def start() -> _Batch | None:
        nonlocal position
        if position >= len(samples):
            return None
        batch = samples[position:position + max(1, batch_size())]
        position += len(batch)
        return _Batch(pool, task, engine, batch)

    current, following = start(), None
    try:
        while current is not None:
            while (call := current.calls.get()) is not _DONE:
                if following is None:  # the current batch reached the engine: prepare the next one
                    following = start()
                _run(engine, call)
            records = current.future.result()
            yield current.samples, records
            if following is not None and len(following.samples) > max(1, batch_size()):
                following.cancel()
                position -= len(following.samples)
                following = None
            current, following = following or start(), None
    finally:
        for batch in (current, following):
            if batch is not None:
                batch.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


def _run(engine, call: _Call) -> None:
    try:
        call.result = getattr(engine, call.method)(*call.args)
    except Exception as exc:  # the task's predict sees it, as in a sequential loop
        call.error = exc
    except BaseException:  # Ctrl-C: stops the loop here; the batch's thread only unwinds
        call.error = Cancelled()
        raise
    finally:
        call.done.set()
