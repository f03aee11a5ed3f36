"""Keeping the model busy: requests batched by prompt length, the next batch encoded ahead.

Left padding costs compute for every padded position of every layer at every step; sorting requests
by an estimate of their prompt length (text, images and their pixel counts) before cutting batches
keeps rows of a batch close in length. Encoding (image decoding and resizing, tokenising) runs on
the CPU while the model runs, so the next batch's inputs are built in a background thread meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from vlmexp.messages import ChatRequest, TextPart


def prompt_length_key(request: ChatRequest) -> tuple[int, int, int]:
    """(images, their pixels, text characters): orders requests by their prompt's token count, up to
    the model's pixel budget, without running the processor."""
    pixels = sum(image.size[0] * image.size[1] for image in request.images)
    chars = sum(len(part.text) for message in request.messages for part in message.content
                if isinstance(part, TextPart))
    return len(request.images) + len(request.videos), pixels, chars


def by_prompt_length(requests: Sequence[ChatRequest]) -> list[int]:
    """Indices of ``requests`` sorted by :func:`prompt_length_key` (stable: ties keep their order)."""
    return sorted(range(len(requests)), key=lambda i: prompt_length_key(requests[i]))


class EncodeAhead:
    """``take(chunk)`` gives ``encode(chunk)`` and starts encoding the requests that follow ``chunk``
    in ``requests`` (as many again) in a background thread, for the next ``take``. A chunk that is
    not the one encoded ahead (after an out-of-memory halving) is encoded on the spot."""

    def __init__(self, requests: Sequence[ChatRequest], encode: Callable[[Sequence[ChatRequest]], object],
                 background: bool = True):
        self.requests = list(requests)
        self.encode = encode
        self.background = background  # False: every chunk is encoded on the spot, no thread
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlmexp-encode")
        self._ahead: tuple[int, int, Future] | None = None  # (start, size, future)
        self._start = 0

    def __enter__(self) -> EncodeAhead:
        return self

    def __exit__(self, *exc) -> None:
        if self._ahead is not None:
            self._ahead[2].cancel()
        self._pool.shutdown(wait=True)

    def take(self, chunk: Sequence[ChatRequest]):
        start = self._find(chunk)
        inputs = None
        if self._ahead is not None:
            ahead_start, ahead_size, future = self._ahead
            self._ahead = None
            if (ahead_start, ahead_size) == (start, len(chunk)):
                inputs = future.result()
            else:
                future.cancel()
        if inputs is None:
            inputs = self.encode(chunk)
        following = self.requests[start + len(chunk):start + 2 * len(chunk)]
        if following and self.background:
            self._ahead = (start + len(chunk), len(following), self._pool.submit(self.encode, following))
        return inputs

    def _find(self, chunk: Sequence[ChatRequest]) -> int:
        """Where ``chunk`` starts: batches come in order, a retried one starts where the last did."""
        for start in (self._start + n for n in (0, *range(1, len(self.requests) + 1))):
            if start < len(self.requests) and self.requests[start] is chunk[0]:
                self._start = start
                return start
        raise ValueError("chunk not found in the requests being encoded")
