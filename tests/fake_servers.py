"""A real HTTP server on 127.0.0.1 that answers like Ollama's native API (``/api/chat``, ``/api/tags``,
``/api/show``, ``/api/pull``, ``/api/version``) and OpenAI's (``/v1/chat/completions``,
``/v1/models``), with response bodies shaped like the real ones, timing and usage fields included.

Behind it is a *responder*: :class:`HFResponder` runs the real tiny model with the in-process engine
(so the answers are real generations), :func:`echo` answers from the request's content. ``format``
and ``response_format`` are recorded, not enforced: the in-process engine has no constrained
decoding either, so the same model gives the same tokens through every door.

Faults are planned per chat request (counted from 0, retries included): ``"500"`` (an error
status), ``"hang"`` (no answer until the server stops), ``"malformed"`` (a cut-off JSON body),
``"drop"`` (connection closed without an answer). ``answer_limit`` makes the server go away
(stop listening) once it has answered that many chat requests.

Timings are deterministic, so metrics can be checked by hand: the first chat request reports a
0.5 s model load (later ones 0.001 s), prompt evaluation takes 1 ms per prompt token and
generation 10 ms per answer token.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.helpers import image_key
from vlmexp.messages import ChatRequest, ImagePart, Message, TextPart

FIRST_LOAD_NS = 500_000_000
LATER_LOAD_NS = 1_000_000
PROMPT_TOKEN_NS = 1_000_000
ANSWER_TOKEN_NS = 10_000_000
HANG_LIMIT_S = 30.0
CREATED_AT = "2025-06-01T12:00:00.000000Z"
DIGEST = "5ced39dfa4bac325dc183dd1e4febaa1c46b3ea28bce48896c8e69c1e79611cc"


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    truncated: bool = False  # stopped at the token cap: done_reason / finish_reason "length"


Responder = Callable[[ChatRequest], Reply]


def echo(request: ChatRequest) -> Reply:
    """A smoke-contract answer that names what was asked: the key of the first image and the last text."""
    images = request.images
    text = json.dumps({"has_smoke": False, "bbox": [0, 0, 0, 0], "image": image_key(images[0]) if images else None,
                       "text": request.messages[-1].text})
    prompt = sum(len(m.text.split()) for m in request.messages) + 16 * len(images)
    return Reply(text, prompt, len(text.split()))


class HFResponder:
    """The real model behind the server: greedy generation by the in-process engine, one request at a
    time, the answer length taken from the request (``num_predict`` / ``max_tokens``)."""

    def __init__(self, engine):
        self.engine = engine
        self.lock = threading.Lock()

    def __call__(self, request: ChatRequest) -> Reply:
        with self.lock:
            generation = self.engine.generate([request])[0]
        return Reply(generation.text, generation.prompt_tokens, generation.completion_tokens, generation.truncated)


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _decode_image(data: str):
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        return image.convert("RGB")


def _full_tag(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


class FakeServer:
    """``models``: names the server has (Ollama tags, OpenAI model ids). ``pullable``: tags
    ``/api/pull`` can fetch. ``capabilities``: what ``/api/show`` reports. ``api_key``: when set, the
    OpenAI routes want ``Authorization: Bearer <api_key>``. ``delay_s``: seconds before each chat
    answer (a number, or a function of the request). ``digest``: the model digest ``/api/tags``
    reports (another value: other weights behind the same tag); ``system_fingerprint``: sent in every
    OpenAI answer when set."""

    def __init__(self, responder: Responder = echo, *, models=("tiny:latest",), pullable=(), port: int = 0,
                 capabilities=("completion", "vision"), api_key: str | None = None,
                 delay_s: float | Callable[[ChatRequest], float] = 0.0, faults: dict[int, str] | None = None,
                 answer_limit: int | None = None, digest: str = DIGEST,
                 system_fingerprint: str | None = None):
        self.responder = responder
        self.digest = digest
        self.system_fingerprint = system_fingerprint
        self.models = list(models)
        self.pullable = {_full_tag(m) for m in pullable}
        self.capabilities = list(capabilities)
        self.api_key = api_key
        self.delay_s = delay_s
        self.faults = dict(faults or {})
        self.answer_limit = answer_limit
        self.chats: list[dict] = []  # every chat request: api, path, body, authorization, outcome
        self.calls: list[str] = []  # every request: "METHOD /path"
        self.answered = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._stopped = False
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    @property
    def ollama_host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        """Stop listening: later connections are refused."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- routes ---------------------------------------------------------------------------------
    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        path = h.path.split("?")[0].rstrip("/")
        with self._lock:
            self.calls.append(f"{method} {path}")
        body = {}
        if method == "POST":
            raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
            body = json.loads(raw or b"{}")
        routes = {("GET", ""): lambda: _text(h, 200, "Ollama is running"),
                  ("GET", "/api/version"): lambda: _json(h, 200, {"version": "0.12.6"}),
                  ("GET", "/api/tags"): lambda: _json(h, 200, {"models": [self._tag_entry(m) for m in self.models]}),
                  ("POST", "/api/show"): lambda: self._show(h, body),
                  ("POST", "/api/pull"): lambda: self._pull(h, body),
                  ("POST", "/api/chat"): lambda: self._chat(h, "ollama", path, body),
                  ("GET", "/v1/models"): lambda: self._openai_models(h),
                  ("POST", "/v1/chat/completions"): lambda: self._chat(h, "openai", path, body)}
        route = routes.get((method, path))
        if route is None:
            _text(h, 404, "404 page not found")
        else:
            route()

    def has(self, name: str, api: str = "ollama") -> bool:
        """Ollama matches ``name`` and ``name:latest``; OpenAI servers match ids exactly."""
        if api == "ollama":
            return _full_tag(name) in {_full_tag(m) for m in self.models}
        return name in self.models

    def _tag_entry(self, name: str) -> dict:
        return {"name": name, "model": name, "modified_at": CREATED_AT, "size": 6_000_000_000,
                "digest": self.digest, "details": self._details()}

    @staticmethod
    def _details() -> dict:
        return {"parent_model": "", "format": "gguf", "family": "qwen25vl", "families": ["qwen25vl"],
                "parameter_size": "8.3B", "quantization_level": "Q4_K_M"}

    def _show(self, h, body: dict) -> None:
        name = body.get("model") or body.get("name") or ""
        if not self.has(name):
            return _json(h, 404, {"error": f"model '{body.get('model')}' not found"})
        _json(h, 200, {"license": "Apache-2.0", "modelfile": f"FROM {name}\n", "parameters": "temperature 0.0001",
                       "template": "{{ .Prompt }}", "details": self._details(),
                       "model_info": {"general.architecture": "qwen25vl", "qwen25vl.context_length": 128000},
                       "capabilities": self.capabilities, "modified_at": CREATED_AT})

    def _pull(self, h, body: dict) -> None:
        name = _full_tag(body.get("model") or "")
        lines = [{"status": "pulling manifest"}]
        if name in self.pullable:
            lines += [{"status": f"pulling {DIGEST[:12]}", "digest": f"sha256:{DIGEST}", "total": 6_000_000_000,
                       "completed": 6_000_000_000},
                      {"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
            with self._lock:
                self.models.append(name)
        else:
            lines.append({"error": "pull model manifest: file does not exist"})
        if body.get("stream") is False:
            last = lines[-1]
            return _json(h, 500 if "error" in last else 200, last)
        h.send_response(200)
        h.send_header("Content-Type", "application/x-ndjson")
        h.end_headers()
        for line in lines:
            h.wfile.write(json.dumps(line).encode() + b"\n")

    def _openai_models(self, h) -> None:
        if not self._authorised(h):
            return _json(h, 401, {"error": "Unauthorized"})
        _json(h, 200, {"object": "list", "data": [
            {"id": m, "object": "model", "created": 1748779200, "owned_by": "vllm", "root": m, "parent": None,
             "max_model_len": 32768} for m in self.models]})

    def _authorised(self, h) -> bool:
        return self.api_key is None or h.headers.get("Authorization") == f"Bearer {self.api_key}"

    # -- chat -----------------------------------------------------------------------------------
    def _chat(self, h, api: str, path: str, body: dict) -> None:
        with self._lock:
            number = len(self.chats)
            entry = {"api": api, "path": path, "body": body, "authorization": h.headers.get("Authorization"),
                     "outcome": None}
            self.chats.append(entry)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            gone = self.answer_limit is not None and self.answered >= self.answer_limit
        try:
            fault = "drop" if gone else self.faults.get(number)
            entry["outcome"] = fault
            if fault == "drop":
                h.close_connection = True
                return
            if fault == "hang":
                self._release.wait(HANG_LIMIT_S)
                return
            if fault == "500":
                return _json(h, 500, {"error": "llama runner process has terminated: exit status 2"} if api == "ollama"
                             else {"object": "error", "message": "internal error", "type": "InternalServerError",
                                   "param": None, "code": 500})
            if fault == "malformed":
                data = b'{"model": "tiny:latest", "created_at": "2025-06-01T12:00:00Z", "message": {"role": "assi'
                return _raw(h, 200, data, "application/json; charset=utf-8")
            if api == "openai" and not self._authorised(h):
                entry["outcome"] = "401"
                return _json(h, 401, {"error": "Unauthorized"})
            model = body.get("model", "")
            if not self.has(model, api):
                entry["outcome"] = "404"
                return _json(h, 404, {"error": f"model '{model}' not found"} if api == "ollama" else
                             {"object": "error", "message": f"The model `{model}` does not exist.",
                              "type": "NotFoundError", "param": None, "code": 404})
            request = _ollama_request(body) if api == "ollama" else _openai_request(body)
            delay = self.delay_s(request) if callable(self.delay_s) else self.delay_s
            if delay:
                time.sleep(delay)
            began = time.perf_counter_ns()
            reply = self.responder(request)
            with self._lock:
                gone = self.answer_limit is not None and self.answered >= self.answer_limit
                first = self.answered == 0
                self.answered += 0 if gone else 1
                last = self.answer_limit is not None and self.answered == self.answer_limit and not gone
            if gone:  # another request reached the limit while this one was being answered
                entry["outcome"] = "drop"
                h.close_connection = True
                return
            if last:
                self.stop()  # nothing can connect any more, before the client sees this answer
            entry["outcome"] = "answered"
            if api == "ollama":
                _json(h, 200, _ollama_body(model, reply, first, time.perf_counter_ns() - began))
            else:
                _json(h, 200, _openai_body(model, reply, number, self.system_fingerprint))
        finally:
            with self._lock:
                self.in_flight -= 1


def _ollama_request(body: dict) -> ChatRequest:
    messages = []
    for m in body.get("messages", []):
        parts = [ImagePart(_decode_image(b)) for b in m.get("images") or []]
        if m.get("content"):
            parts.append(TextPart(m["content"]))
        messages.append(Message(m["role"], parts))
    return ChatRequest(messages, response_schema=body.get("format"),
                       max_new_tokens=(body.get("options") or {}).get("num_predict"))


def _openai_request(body: dict) -> ChatRequest:
    messages = []
    for m in body.get("messages", []):
        content = m.get("content")
        parts = []
        for part in [{"type": "text", "text": content}] if isinstance(content, str) else content or []:
            if part["type"] == "text":
                parts.append(TextPart(part["text"]))
            elif part["type"] == "image_url":
                parts.append(ImagePart(_decode_image(part["image_url"]["url"].split("base64,", 1)[1])))
        messages.append(Message(m["role"], parts))
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
    return ChatRequest(messages, response_schema=schema,
                       max_new_tokens=body.get("max_completion_tokens") or body.get("max_tokens"))


def _ollama_body(model: str, reply: Reply, first: bool, spent_ns: int) -> dict:
    load = FIRST_LOAD_NS if first else LATER_LOAD_NS
    prompt_ns = reply.prompt_tokens * PROMPT_TOKEN_NS
    eval_ns = reply.completion_tokens * ANSWER_TOKEN_NS
    return {"model": model, "created_at": CREATED_AT, "message": {"role": "assistant", "content": reply.text},
            "done_reason": "length" if reply.truncated else "stop", "done": True,
            "total_duration": load + prompt_ns + eval_ns + spent_ns,
            "load_duration": load, "prompt_eval_count": reply.prompt_tokens, "prompt_eval_duration": prompt_ns,
            "eval_count": reply.completion_tokens, "eval_duration": eval_ns}


def _openai_body(model: str, reply: Reply, number: int, system_fingerprint: str | None = None) -> dict:
    body = {"id": f"chatcmpl-{number:032x}", "object": "chat.completion", "created": 1748779200, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "reasoning_content": None,
                                                 "content": reply.text, "tool_calls": []},
                         "logprobs": None, "finish_reason": "length" if reply.truncated else "stop",
                         "stop_reason": None}],
            "usage": {"prompt_tokens": reply.prompt_tokens,
                      "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                      "completion_tokens": reply.completion_tokens, "prompt_tokens_details": None},
            "prompt_logprobs": None}
    if system_fingerprint:
        body["system_fingerprint"] = system_fingerprint
    return body


def _raw(h, status: int, data: bytes, content_type: str) -> None:
    h.send_response(status)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def _json(h, status: int, body) -> None:
    _raw(h, status, json.dumps(body).encode(), "application/json; charset=utf-8")


def _text(h, status: int, text: str) -> None:
    _raw(h, status, text.encode(), "text/plain; charset=utf-8")


def _handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def _serve(self, method: str) -> None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                server.handle(self, method)

        def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
            pass

    return Handler
