"""A local or remote Ollama server through the official client: ``/api/chat``, images attached to
the messages, the task's output contract as ``format`` (structured outputs). Loads nothing of
Hugging Face: the server holds the model."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from vlmexp.engines.remote import (
    Answer,
    RemoteEngine,
    RequestFailed,
    Retryable,
    connection_problem,
    message_images,
    png_bytes,
)
from vlmexp.errors import EngineError
from vlmexp.messages import ChatRequest, Generation

log = logging.getLogger(__name__)

DEFAULT_HOST = "http://localhost:11434"
#: Start-up checks (is the server there, does it have the model) must answer within this.
STARTUP_TIMEOUT_S = 10.0


def _seconds(nanoseconds: int | None) -> float:
    return (nanoseconds or 0) / 1e9


def _why(exc: BaseException, timeout_s: float) -> str:
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout_s:g} s"
    return connection_problem(exc)


def _full_tag(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def _digest(listed, tag: str) -> str:
    """The digest ``GET /api/tags`` reports for ``tag``; 'unknown' when it does not list it."""
    for model in getattr(listed, "models", None) or []:
        if _full_tag(model.model or "") == _full_tag(tag) and model.digest:
            return model.digest
    return "unknown"


class OllamaEngine(RemoteEngine):
    """``host``: else ``$OLLAMA_HOST``, else http://localhost:11434. ``model_tag``: else the model
    config's ``ollama_tag``. ``pull``: pull a missing tag instead of stopping. Sampling options go
    in each request's ``options``; ``num_predict`` caps the task's own answer length."""

    execution_keys = RemoteEngine.execution_keys | {"host", "pull", "keep_alive"}

    def __init__(self, host: str | None = None, model_tag: str | None = None, pull: bool = False,
                 concurrency: int = 1, timeout_s: float = 180.0, max_retries: int = 3, backoff_s: float = 1.0,
                 max_consecutive_failures: int = 3, temperature: float = 0.0, num_ctx: int | None = 8192,
                 num_predict: int | None = 256, keep_alive: str | float | None = "5m", resize: bool = True, *,
                 run=None):
        super().__init__(concurrency, timeout_s, max_retries, backoff_s, max_consecutive_failures)
        self.resize_for(run, resize)
        import httpx
        import ollama

        self.model_tag = self.model_setting(run, model_tag, "ollama_tag", "model_tag",
                                            "TAG (a name from `ollama list`, e.g. qwen2.5vl:7b)")
        self.seed = self.run_seed(run)
        self.temperature = temperature
        self.num_ctx = num_ctx
        self.num_predict = num_predict
        self.keep_alive = keep_alive
        env_host = os.environ.get("OLLAMA_HOST")
        self.host = host or env_host or DEFAULT_HOST
        origin = "" if host else " (from OLLAMA_HOST)" if env_host else " (the default)"
        self.server = f"the Ollama server at {self.host}"
        self.client = ollama.Client(self.host, timeout=httpx.Timeout(self.timeout_s,
                                                                     connect=min(self.timeout_s, 10.0)))
        self.capabilities = self._check_server(origin, pull)
        log.info("engine: Ollama at %s, model %s, %d request(s) in flight", self.host, self.model_tag,
                 self.concurrency)

    # -- start-up -------------------------------------------------------------------------------
    def _check_server(self, origin: str, pull: bool) -> list[str]:
        """Fail at once, in one line, when the server is not there or lacks the model."""
        import httpx
        import ollama

        probe = ollama.Client(self.host, timeout=STARTUP_TIMEOUT_S)
        tag = self.model_tag
        try:
            try:
                listed = probe.list()
            except (ollama.ResponseError, ValueError) as exc:
                raise EngineError(f"{self.host}{origin} does not answer like an Ollama server "
                                  f"(GET /api/tags: {exc})") from None
            try:
                info = probe.show(tag)
            except ollama.ResponseError as exc:
                if exc.status_code != 404:
                    raise EngineError(f"{self.server}: cannot look up model {tag}: {exc}") from None
                if not pull:
                    raise EngineError(f"{self.server} does not have the model {tag}: run `ollama pull {tag}` "
                                      "there (or set engine.pull=true)") from None
                self._pull(ollama.Client(self.host, timeout=httpx.Timeout(None, connect=STARTUP_TIMEOUT_S)))
                info = probe.show(tag)
                listed = probe.list()
            except ValueError as exc:
                raise EngineError(f"{self.server}: malformed answer to POST /api/show for {tag}: "
                                  f"{str(exc).splitlines()[0]}") from None
        except (ConnectionError, httpx.TransportError) as exc:
            raise EngineError(f"cannot reach the Ollama server at {self.host}{origin}: "
                              f"{_why(exc, STARTUP_TIMEOUT_S)}; start it with `ollama serve`, or set OLLAMA_HOST "
                              "(or engine.host) to a running one") from None
        finally:
            probe.close()
        self.digest = _digest(listed, tag)
        return list(info.capabilities or [])

    def model_identity(self) -> dict[str, str]:
        """The tag and the digest of the weights the server holds under it (``GET /api/tags``)."""
        return {"model": self.model_tag, "digest": self.digest}

    def _pull(self, client) -> None:
        import ollama

        log.info("%s does not have %s: pulling it (engine.pull=true)", self.server, self.model_tag)
        last = None
        try:
            for progress in client.pull(self.model_tag, stream=True):
                if progress.status != last:
                    log.info("ollama pull %s: %s", self.model_tag, progress.status)
                    last = progress.status
        except ollama.ResponseError as exc:
            raise EngineError(f"`ollama pull {self.model_tag}` failed on {self.host}: {exc.error}") from None
        finally:
            client.close()

    # -- requests -------------------------------------------------------------------------------
    def messages(self, request: ChatRequest) -> list[dict]:
        """Ollama's message form: the text of a message, its images attached (PNG, lossless)."""
        out = []
        for message in request.messages:
            wire: dict = {"role": message.role, "content": message.text}
            images = message_images(message)
            if images:
                wire["images"] = [png_bytes(image) for image in images]
            out.append(wire)
        return out

    def options(self, request: ChatRequest) -> dict:
        options: dict = {"temperature": self.temperature}
        if self.seed is not None:
            options["seed"] = self.seed
        if self.num_ctx:
            options["num_ctx"] = self.num_ctx
        caps = [n for n in (request.max_new_tokens, self.num_predict) if n]
        if caps:
            options["num_predict"] = min(caps)
        return options

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation]:
        if self.capabilities and "vision" not in self.capabilities and any(r.images or r.videos for r in requests):
            raise EngineError(f"model {self.model_tag} on {self.host} cannot read images (its capabilities: "
                              f"{', '.join(self.capabilities)}); use a vision model such as qwen2.5vl:7b")
        return super().generate(requests)

    def _send(self, request: ChatRequest) -> Answer:
        import httpx
        import ollama

        try:
            response = self.client.chat(model=self.model_tag, messages=self.messages(request), stream=False,
                                        format=request.response_schema, options=self.options(request),
                                        keep_alive=self.keep_alive)
        except (ConnectionError, httpx.TransportError) as exc:
            raise Retryable(_why(exc, self.timeout_s)) from None
        except ollama.ResponseError as exc:
            message = f"HTTP {exc.status_code}: {exc.error}"
            if exc.status_code >= 500 or exc.status_code == 429:
                raise Retryable(message) from None
            raise RequestFailed(message) from None
        except ValueError as exc:  # not JSON, or JSON not shaped like a chat response
            raise RequestFailed(f"malformed response: {str(exc).splitlines()[0]}") from None
        return Answer(text=response.message.content or "", prompt_tokens=response.prompt_eval_count,
                      completion_tokens=response.eval_count, truncated=response.done_reason == "length",
                      timings={"load_s": _seconds(response.load_duration),
                               "prompt_eval_s": _seconds(response.prompt_eval_duration),
                               "eval_s": _seconds(response.eval_duration),
                               "total_s": _seconds(response.total_duration)})

    # -- metrics --------------------------------------------------------------------------------
    def run_metrics(self) -> dict[str, float]:
        """From the server's own timings: decoding speed (Ollama's "eval rate"), prompt speed, and
        the time spent loading the model."""
        metrics = self.token_metrics()
        if self.totals["eval_s"] > 0:
            metrics["tokens_per_s"] = self.totals["completion_tokens"] / self.totals["eval_s"]
        if self.totals["prompt_eval_s"] > 0:
            metrics["prompt_tokens_per_s"] = self.totals["prompt_tokens"] / self.totals["prompt_eval_s"]
        metrics["model_load_s"] = float(self.totals["load_s"])
        return metrics

    def close(self) -> None:
        self.client.close()
