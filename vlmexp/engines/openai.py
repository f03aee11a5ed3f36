"""Any OpenAI-compatible chat-completions server (``vllm serve``, SGLang, LM Studio, Ollama's /v1)
through the official client: images as base64 data URLs, the task's output contract as a
``json_schema`` response format. The API key is read from the environment variable named in the
config, so it never appears in the config, the logs or MLflow."""

from __future__ import annotations

import logging
import os

from vlmexp.engines.remote import Answer, RemoteEngine, RequestFailed, Retryable, connection_problem, png_base64
from vlmexp.errors import EngineError
from vlmexp.messages import ChatRequest, ImagePart, TextPart, VideoPart

log = logging.getLogger(__name__)

#: Start-up checks (is the server there, does it serve the model) must answer within this.
STARTUP_TIMEOUT_S = 10.0
#: Sent when the key variable is unset: servers started without a key (vllm serve) accept anything.
NO_KEY = "EMPTY"


def _image_url(image) -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png_base64(image)}"}}


def _parts(message) -> list[dict]:
    """Content parts in their order; a video's frames become images (no such server takes video)."""
    parts: list[dict] = []
    for part in message.content:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            parts.append(_image_url(part.image))
        elif isinstance(part, VideoPart):
            parts.extend(_image_url(frame) for frame in part.frames)
    return parts


def _status_detail(exc) -> str:
    """The server's own error message (vLLM: ``{"message": ...}``, OpenAI: ``{"error": {"message": ...}}``)."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        detail = inner.get("message") if isinstance(inner, dict) else inner
        if detail:
            return str(detail)
    return exc.response.reason_phrase or "error"


class OpenAIEngine(RemoteEngine):
    """``model_name``: else the model config's ``hf_id`` (the name ``vllm serve`` gives the model).
    ``api_key_env``: the name of the environment variable that holds the key. ``json_schema``: send the
    task's output contract as the response format (the server constrains the answer to it); false lets the
    model answer freely, as ``engine=hf`` does (``+engine.json_schema=false``, for parity checks)."""

    execution_keys = RemoteEngine.execution_keys | {"base_url", "api_key_env"}

    def __init__(self, base_url: str = "http://localhost:8000/v1", model_name: str | None = None,
                 api_key_env: str | None = "OPENAI_API_KEY", concurrency: int = 4, timeout_s: float = 180.0,
                 max_retries: int = 3, backoff_s: float = 1.0, max_consecutive_failures: int = 3,
                 temperature: float = 0.0, max_tokens: int | None = 256, resize: bool = True,
                 json_schema: bool = True, *, run=None):
        super().__init__(concurrency, timeout_s, max_retries, backoff_s, max_consecutive_failures)
        self.resize_for(run, resize)
        import openai

        self.model_name = self.model_setting(run, model_name, "hf_id", "model_name",
                                             "NAME (the model name the server lists at /v1/models)")
        self.seed = self.run_seed(run)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.json_schema = json_schema
        self.base_url = base_url
        self.server = f"the OpenAI-compatible server at {base_url}"
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env) if api_key_env else None
        if not key:
            log.info("no API key in $%s: sending none (fine for servers started without one)", api_key_env)
        self.system_fingerprint: str | None = None  # from the first answer that carries one
        self.client = openai.OpenAI(base_url=base_url, api_key=key or NO_KEY, timeout=self.timeout_s, max_retries=0)
        self._check_server()
        log.info("engine: %s, model %s, %d request(s) in flight", self.server, self.model_name, self.concurrency)

    # -- start-up -------------------------------------------------------------------------------
    def _check_server(self) -> None:
        """Fail at once, in one line, when the server is not there, refuses the key or lacks the model."""
        import openai

        try:
            served = [m.id for m in self.client.with_options(timeout=STARTUP_TIMEOUT_S).models.list()]
        except openai.APITimeoutError:
            raise EngineError(f"cannot reach {self.server}: no answer within {STARTUP_TIMEOUT_S:g} s; start it "
                              "(e.g. `vllm serve Qwen/Qwen2.5-VL-7B-Instruct`) or set engine.base_url") from None
        except openai.APIConnectionError:
            raise EngineError(f"cannot reach {self.server}: connection refused; start it (e.g. `vllm serve "
                              "Qwen/Qwen2.5-VL-7B-Instruct`) or set engine.base_url") from None
        except openai.AuthenticationError as exc:
            raise EngineError(f"{self.server} refused the API key (HTTP {exc.status_code}): put a valid key in "
                              f"the environment variable {self.api_key_env} (engine.api_key_env)") from None
        except openai.NotFoundError:
            log.warning("%s does not list its models (GET /models: 404); not checking the model name", self.server)
            return
        except (openai.APIError, ValueError) as exc:
            raise EngineError(f"{self.base_url} does not answer like an OpenAI-compatible server "
                              f"(GET /models: {str(exc).splitlines()[0]})") from None
        if self.model_name not in served:
            raise EngineError(f"{self.server} does not serve the model {self.model_name} (it serves: "
                              f"{', '.join(served) or 'nothing'}); set engine.model_name to one of them")

    def model_identity(self) -> dict[str, str]:
        """The server and the model id it serves, and its ``system_fingerprint`` once an answer sent one."""
        identity = {"base_url": self.base_url.rstrip("/"), "model": self.model_name}
        if self.system_fingerprint:
            identity["system_fingerprint"] = self.system_fingerprint
        return identity

    # -- requests -------------------------------------------------------------------------------
    def messages(self, request: ChatRequest) -> list[dict]:
        """Text-only messages as plain strings; the others as content parts in their order."""
        out = []
        for message in request.messages:
            if all(isinstance(p, TextPart) for p in message.content):
                out.append({"role": message.role, "content": message.text})
            else:
                out.append({"role": message.role, "content": _parts(message)})
        return out

    def options(self, request: ChatRequest) -> dict:
        options: dict = {"temperature": self.temperature}
        if self.seed is not None:
            options["seed"] = self.seed
        caps = [n for n in (request.max_new_tokens, self.max_tokens) if n]
        if caps:
            options["max_tokens"] = min(caps)
        if request.response_schema is not None and self.json_schema:
            options["response_format"] = {"type": "json_schema",
                                          "json_schema": {"name": "answer", "schema": request.response_schema}}
        return options

    def _send(self, request: ChatRequest) -> Answer:
        import openai

        try:
            completion = self.client.chat.completions.create(model=self.model_name, messages=self.messages(request),
                                                             **self.options(request))
        except openai.APITimeoutError:
            raise Retryable(f"no answer within {self.timeout_s:g} s") from None
        except openai.APIConnectionError as exc:
            raise Retryable(connection_problem(exc)) from None
        except openai.APIStatusError as exc:
            message = f"HTTP {exc.status_code}: {_status_detail(exc)}"
            if exc.status_code >= 500 or exc.status_code == 429:
                raise Retryable(message) from None
            raise RequestFailed(message) from None
        except (openai.APIResponseValidationError, ValueError) as exc:
            raise RequestFailed(f"malformed response: {str(exc).splitlines()[0]}") from None
        choices = getattr(completion, "choices", None)
        content = choices[0].message.content if choices and getattr(choices[0], "message", None) else None
        if not isinstance(content, str):
            raise RequestFailed(f"malformed response: no message content in {str(completion)[:200]!r}")
        usage = getattr(completion, "usage", None)
        fingerprint = getattr(completion, "system_fingerprint", None)
        if fingerprint and self.system_fingerprint is None:
            self.system_fingerprint = str(fingerprint)
        return Answer(text=content, prompt_tokens=getattr(usage, "prompt_tokens", None),
                      completion_tokens=getattr(usage, "completion_tokens", None),
                      truncated=getattr(choices[0], "finish_reason", None) == "length")

    def close(self) -> None:
        self.client.close()
