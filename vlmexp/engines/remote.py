"""What every engine that sends requests to a model server shares: requests in flight at once,
answers in request order, timeouts, retries with exponential backoff, and giving up cleanly.

A subclass implements :meth:`RemoteEngine._send` (one HTTP call) and turns its client's exceptions
into :class:`Retryable` (timeouts, lost connections, 5xx, 429: worth another try) or
:class:`RequestFailed` (4xx, malformed body: the same request would fail again).
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from abc import abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from vlmexp.engines.base import Engine
from vlmexp.errors import ConfigError, EngineError
from vlmexp.messages import ChatRequest, Generation, ImagePart, Message, VideoPart

log = logging.getLogger(__name__)

#: Longest wait between two attempts, whatever the backoff base and attempt number.
MAX_BACKOFF_S = 60.0


class Retryable(Exception):
    """The request may succeed if sent again (the message says why it failed)."""


class RequestFailed(Exception):
    """The server answered, but not usefully; sending the same request again would not help."""


@dataclass
class Answer:
    """What one successful call returned. ``timings`` are additive totals in seconds."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    truncated: bool = False  # the server stopped it at the token cap


def connection_problem(exc: BaseException) -> str:
    """A short reason for a failed connection, whichever HTTP library raised it."""
    seen, link = set(), exc
    while link is not None and id(link) not in seen:
        if isinstance(link, ConnectionRefusedError):
            return "connection refused"
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    detail = str(exc.__cause__ or exc) or type(exc).__name__
    return f"connection lost ({detail})"


def png_bytes(image) -> bytes:
    """Lossless encoding, so the server decodes exactly the pixels an in-process engine would see."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def png_base64(image) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


#: Qwen2/2.5-VL's resize unit: 14-pixel patches merged 2x2 (the HF processor's patch_size * merge_size).
IMAGE_FACTOR = 28


def resize_to_budget(image, min_pixels: int, max_pixels: int, factor: int = IMAGE_FACTOR):
    """The image as the HF processor resizes it before the model sees it: qwen-vl-utils' ``smart_resize``
    (sides multiples of ``factor``, pixels within the budget, aspect kept), then the processor's own
    resampling (torchvision, bicubic, antialiased, on uint8), so that the pixels are the same too."""
    from qwen_vl_utils import smart_resize

    height, width = smart_resize(image.height, image.width, factor, min_pixels, max_pixels)
    if (width, height) == image.size:
        return image
    from torchvision.transforms.v2 import functional as tvF

    tensor = tvF.pil_to_tensor(image.convert("RGB"))
    resized = tvF.resize(tensor, [height, width], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
    return tvF.to_pil_image(resized)


def resized_request(request: ChatRequest, min_pixels: int, max_pixels: int) -> ChatRequest:
    """``request`` with every image and video frame resized to the model's pixel budget."""
    from dataclasses import replace

    def part(p):
        if isinstance(p, ImagePart):
            return ImagePart(resize_to_budget(p.image, min_pixels, max_pixels))
        if isinstance(p, VideoPart):
            return replace(p, frames=[resize_to_budget(f, min_pixels, max_pixels) for f in p.frames])
        return p

    messages = [Message(m.role, [part(p) for p in m.content]) for m in request.messages]
    return replace(request, messages=messages)


def message_images(message: Message) -> list:
    """The images of a message in order; a video's frames count as images (no server takes video)."""
    images = []
    for part in message.content:
        if isinstance(part, ImagePart):
            images.append(part.image)
        elif isinstance(part, VideoPart):
            images.extend(part.frames)
    return images


class RemoteEngine(Engine):
    """Sends each request on its own, ``concurrency`` at a time, with retries.

    A request whose retries run out becomes ``Generation(error=...)`` and the run goes on; after
    ``max_consecutive_failures`` such requests in a row the server is taken to be gone and
    :meth:`generate` raises :class:`EngineError`. Batches are ``concurrency`` requests, so a killed
    run loses at most the requests in flight.
    """

    #: How the server is named in messages ("the Ollama server at http://...").
    server: str = "the server"
    execution_keys = Engine.execution_keys | {"concurrency", "timeout_s", "max_retries", "backoff_s",
                                              "max_consecutive_failures"}

    def __init__(self, concurrency: int = 1, timeout_s: float = 180.0, max_retries: int = 3,
                 backoff_s: float = 1.0, max_consecutive_failures: int = 3):
        for key, value, least in (("concurrency", concurrency, 1), ("max_retries", max_retries, 0),
                                  ("max_consecutive_failures", max_consecutive_failures, 1)):
            if value < least:
                raise ConfigError(f"engine.{key}={value}: must be >= {least}")
        for key, value in (("timeout_s", timeout_s), ("backoff_s", backoff_s)):
            if value is None or value < 0 or (key == "timeout_s" and value == 0):
                raise ConfigError(f"engine.{key}={value}: must be a positive number of seconds")
        # One line per HTTP request at INFO would bury the progress bar.
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
        self.concurrency = concurrency
        self.timeout_s = float(timeout_s)
        self.max_retries = max_retries
        self.backoff_s = float(backoff_s)
        self.max_consecutive_failures = max_consecutive_failures
        self.totals: Counter = Counter()  # tokens and server timings of the answered requests
        self._lock = threading.Lock()
        self._failures_in_a_row = 0
        self._gone: str | None = None
        self._busy_s = 0.0
        self._numbered = 0  # requests handed to generate() so far: numbers them in the log
        self.pixel_budget: tuple[int, int] | None = None  # (min_pixels, max_pixels) images are resized to

    def resize_for(self, run, resize: bool) -> None:
        """With ``resize`` (engine.resize), send images resized to the run's model.min_pixels/max_pixels,
        so the server sees what the HF engine's processor makes (a server resizing by its own defaults
        shows the model other pixels, and boxes in pixels of the sent image come back right)."""
        if resize and run is not None:
            self.pixel_budget = (int(run.cfg.model.min_pixels), int(run.cfg.model.max_pixels))
            # imported now (seconds, once), not inside the first batch, whose wall time it would inflate
            from torchvision.transforms.v2 import functional  # noqa: F401
    @staticmethod
    def model_setting(run, explicit: str | None, model_key: str, engine_key: str, hint: str) -> str:
        """``engine.<engine_key>`` if given, else ``model.<model_key>``; else a one-line ConfigError."""
        model_cfg = run.cfg.model if run is not None else None
        value = explicit or (model_cfg.get(model_key) if model_cfg is not None else None)
        if not value:
            name = model_cfg.name if model_cfg is not None else "?"
            raise ConfigError(f"model={name} has no model.{model_key}: set engine.{engine_key}={hint}")
        return value

    @staticmethod
    def run_seed(run) -> int | None:
        return int(run.cfg.seed) if run is not None else None

    @abstractmethod
    def _send(self, request: ChatRequest) -> Answer:
        """One call to the server; raises :class:`Retryable` or :class:`RequestFailed`."""

    # -- protocol -------------------------------------------------------------------------------
    def preferred_batch_size(self) -> int:
        return self.concurrency

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation]:
        if self._gone:
            raise EngineError(self._gone)
        results: list[Generation | None] = [None] * len(requests)
        pending = iter(range(len(requests)))
        first_number, self._numbered = self._numbered, self._numbered + len(requests)
        stop = threading.Event()
        crashed: list[BaseException] = []

        def worker() -> None:
            try:
                while not stop.is_set():
                    with self._lock:
                        index = next(pending, None)
                    if index is None:
                        return
                    request = requests[index]
                    if self.pixel_budget is not None:  # in the worker: resizing overlaps requests in flight
                        request = resized_request(request, *self.pixel_budget)
                    results[index] = self._answer(request, first_number + index, stop)
            except BaseException as exc:  # a bug, not a server fault: re-raised in the caller
                crashed.append(exc)
                stop.set()

        began = time.perf_counter()
        threads = [threading.Thread(target=worker, daemon=True, name=f"{type(self).__name__}-{k}")
                   for k in range(min(self.concurrency, len(requests)))]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=0.1)  # wakes up for Ctrl-C
        except BaseException:
            stop.set()
            raise
        finally:
            self._busy_s += time.perf_counter() - began
        if crashed:
            raise crashed[0]
        if self._gone:
            raise EngineError(self._gone)
        return list(results)

    # -- one request ----------------------------------------------------------------------------
    def _answer(self, request: ChatRequest, number: int, stop: threading.Event) -> Generation:
        began = time.perf_counter()
        reason = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1))
                log.warning("request %d: %s; retry %d of %d in %.3g s", number, reason, attempt,
                            self.max_retries, delay)
                if stop.wait(delay):
                    break
            sent = time.perf_counter()
            try:
                answer = self._send(request)
            except Retryable as exc:
                reason = str(exc)
                continue
            except RequestFailed as exc:
                log.warning("request %d failed: %s", number, exc)
                with self._lock:
                    self._failures_in_a_row = 0  # the server is there, it answered
                return Generation(text="", latency_s=time.perf_counter() - began, error=str(exc))
            latency = time.perf_counter() - sent
            with self._lock:
                self._failures_in_a_row = 0
                self.totals["prompt_tokens"] += answer.prompt_tokens or 0
                self.totals["completion_tokens"] += answer.completion_tokens or 0
                self.totals.update(answer.timings)
            return Generation(text=answer.text.strip(), latency_s=latency, prompt_tokens=answer.prompt_tokens,
                              completion_tokens=answer.completion_tokens, truncated=answer.truncated,
                              image_sizes=[tuple(i.size) for m in request.messages for i in message_images(m)])
        error = f"{reason} (gave up after {self.max_retries} retries)"
        log.warning("request %d: %s", number, error)
        with self._lock:
            self._failures_in_a_row += 1
            if self._failures_in_a_row >= self.max_consecutive_failures and not self._gone:
                self._gone = (f"{self.server} stopped answering: {self._failures_in_a_row} requests in a row "
                              f"failed ({reason}); the answers so far are saved, rerun the same command to "
                              "resume once it is back")
                stop.set()
        return Generation(text="", latency_s=time.perf_counter() - began, error=error)

    # -- metrics --------------------------------------------------------------------------------
    def token_metrics(self) -> dict[str, float]:
        return {"prompt_tokens_total": float(self.totals["prompt_tokens"]),
                "completion_tokens_total": float(self.totals["completion_tokens"])}

    def run_metrics(self) -> dict[str, float]:
        """Token totals, and client-side throughput: completion tokens per second of generating."""
        metrics = self.token_metrics()
        if self._busy_s > 0:
            metrics["tokens_per_s"] = self.totals["completion_tokens"] / self._busy_s
        return metrics
