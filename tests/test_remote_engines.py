"""engine=ollama and engine=openai against real HTTP servers on 127.0.0.1: what they send, how many
requests they keep in flight, the order of the answers, every fault, the start-up checks, metrics."""

from __future__ import annotations

import base64
import io
import json

import pytest
from hydra.utils import instantiate
from PIL import Image

from tests.conftest import compose_config
from tests.fake_servers import FakeServer, closed_port, echo
from tests.helpers import image_key
from vlmexp.engines.remote import resize_to_budget
from vlmexp.errors import ConfigError, EngineError
from vlmexp.messages import ChatRequest, ImagePart, TextPart, chat
from vlmexp.runner import RunContext
from vlmexp.tasks.smoke_contract import RESPONSE_SCHEMA
from vlmexp.tracking.null import NullTracker

QWEN_TAG, QWEN_ID = "qwen2.5vl:7b", "Qwen/Qwen2.5-VL-7B-Instruct"
FAST = ["engine.backoff_s=0.01", "engine.timeout_s=2", "engine.concurrency=1"]  # one at a time: faults in order


def build_engine(tmp_path, *overrides: str, model: str = "qwen7b"):
    """The engine exactly as the runner builds it: from the composed config, with a RunContext."""
    cfg = compose_config(["task=smoke", f"model={model}", "mode=eval", "seed=7", *overrides])
    run = RunContext(cfg, tmp_path, tmp_path, NullTracker(), "fingerprint")
    return instantiate(cfg.engine, _partial_=True)(run=run)


def engine_for(api: str, server: FakeServer, tmp_path, *overrides: str):
    where = (f"engine.host={server.ollama_host}" if api == "ollama" else f"engine.base_url={server.openai_base_url}")
    return build_engine(tmp_path, f"engine={api}", where, *overrides)


def picture(seed: int, size=(40, 30)) -> Image.Image:
    """A small image whose pixels all differ from one seed to the next."""
    image = Image.new("RGB", size)
    image.putdata([((x * 7 + seed * 31) % 256, (y * 11 + seed * 17) % 256, (x * y + seed) % 256)
                   for y in range(size[1]) for x in range(size[0])])
    return image


def smoke_request(image, question: str = "Smoke?", max_new_tokens: int | None = 64) -> ChatRequest:
    return ChatRequest(chat("You detect smoke.", ImagePart(image), TextPart(question)),
                       response_schema=RESPONSE_SCHEMA, max_new_tokens=max_new_tokens)


def decoded(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


@pytest.fixture
def server():
    with FakeServer(models=[QWEN_TAG, QWEN_ID]) as s:
        yield s


# -- what goes over the wire ----------------------------------------------------------------------
def test_ollama_request_shape(server, tmp_path):
    engine = build_engine(tmp_path, "engine=ollama", f"engine.host={server.ollama_host}")
    image = picture(1)
    first, second = engine.generate([smoke_request(image), smoke_request(image, "Again?", max_new_tokens=None)])

    assert server.calls[:2] == ["GET /api/tags", "POST /api/show"]  # start-up checks, then the chats
    body = server.chats[0]["body"]
    assert body["model"] == QWEN_TAG  # from model=qwen7b's ollama_tag
    assert body["stream"] is False
    assert body["format"] == RESPONSE_SCHEMA
    assert body["options"] == {"temperature": 0.0, "seed": 7, "num_ctx": 8192, "num_predict": 64}
    assert body["keep_alive"] == "5m"
    system, user = body["messages"]
    assert system == {"role": "system", "content": "You detect smoke."}
    assert user["role"] == "user" and user["content"] == "Smoke?" and len(user["images"]) == 1
    # resized to model=qwen7b's budget as the HF processor does (40x30 -> 532x392: 266 visual tokens), lossless
    sent = resize_to_budget(image, 256 * 28 * 28, 1280 * 28 * 28)
    assert sent.size == (532, 392) and first.image_sizes == [(532, 392)]
    assert list(decoded(user["images"][0]).getdata()) == list(sent.getdata())
    assert server.chats[1]["body"]["options"]["num_predict"] == 256  # engine.num_predict when the task sets none

    expected = echo(smoke_request(sent))
    assert first.text == expected.text and json.loads(first.text)["image"] == image_key(sent)
    assert (first.prompt_tokens, first.completion_tokens) == (expected.prompt_tokens, expected.completion_tokens)
    assert first.error is None and first.latency_s > 0
    assert json.loads(second.text)["text"] == "Again?"


def test_ollama_tag_override_and_host_from_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", server.ollama_host)
    server.models.append("qwen2.5vl:3b")
    engine = build_engine(tmp_path, "engine=ollama", "engine.model_tag=qwen2.5vl:3b", "engine.num_predict=16")
    engine.generate([smoke_request(picture(2))])
    assert server.chats[0]["body"]["model"] == "qwen2.5vl:3b"
    assert server.chats[0]["body"]["options"]["num_predict"] == 16  # the engine's cap is below the task's 64


def test_openai_request_shape_and_key(server, tmp_path, monkeypatch):
    server.api_key = "sk-test-4f1c9"
    monkeypatch.setenv("VLMEXP_TEST_KEY", "sk-test-4f1c9")
    engine = build_engine(tmp_path, "engine=openai", f"engine.base_url={server.openai_base_url}",
                          "engine.api_key_env=VLMEXP_TEST_KEY")
    image = picture(3)
    (answer,) = engine.generate([smoke_request(image)])

    assert server.calls[0] == "GET /v1/models"
    chat_call = server.chats[0]
    assert chat_call["authorization"] == "Bearer sk-test-4f1c9"
    body = chat_call["body"]
    assert body["model"] == QWEN_ID  # model=qwen7b's hf_id, the name vllm serve gives it
    assert body["temperature"] == 0.0 and body["seed"] == 7 and body["max_tokens"] == 64
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "answer", "schema": RESPONSE_SCHEMA}}
    system, user = body["messages"]
    assert system == {"role": "system", "content": "You detect smoke."}
    image_part, text_part = user["content"]
    assert text_part == {"type": "text", "text": "Smoke?"}
    url = image_part["image_url"]["url"]
    assert image_part["type"] == "image_url" and url.startswith("data:image/png;base64,")
    sent = resize_to_budget(image, 256 * 28 * 28, 1280 * 28 * 28)
    assert list(decoded(url.split(",", 1)[1]).getdata()) == list(sent.getdata())
    assert json.loads(answer.text)["image"] == image_key(sent) and answer.error is None


def test_openai_json_schema_off_lets_the_model_answer_freely(server, tmp_path):
    engine = build_engine(tmp_path, "engine=openai", f"engine.base_url={server.openai_base_url}",
                          "+engine.json_schema=false")
    engine.generate([smoke_request(picture(3))])
    assert "response_format" not in server.chats[0]["body"] and server.chats[0]["body"]["max_tokens"] == 64


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_resize_false_sends_the_original_image(api, server, tmp_path):
    engine = engine_for(api, server, tmp_path, "engine.resize=false")
    image = picture(5)
    (answer,) = engine.generate([smoke_request(image)])
    assert json.loads(answer.text)["image"] == image_key(image) and answer.image_sizes == [(40, 30)]


def test_openai_model_name_override(server, tmp_path):
    server.models.append("qwen-vl-local")
    engine = engine_for("openai", server, tmp_path, "engine.model_name=qwen-vl-local")
    engine.generate([smoke_request(picture(4))])
    assert server.chats[0]["body"]["model"] == "qwen-vl-local"


# -- concurrency and order ------------------------------------------------------------------------
@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_requests_in_flight_and_answer_order(api, tmp_path):
    n = 7

    def slower_first(request: ChatRequest) -> float:  # request k takes 0.1 * (7 - k) s: answers arrive reversed
        return 0.1 * (n - int(request.messages[-1].text[1:]))

    with FakeServer(models=[QWEN_TAG, QWEN_ID], delay_s=slower_first) as server:
        engine = engine_for(api, server, tmp_path, "engine.concurrency=3")
        answers = engine.generate([smoke_request(picture(k), f"q{k}") for k in range(n)])
    assert engine.preferred_batch_size() == 3  # a killed run loses at most the requests in flight
    assert server.max_in_flight == 3
    assert len(server.chats) == n
    assert [json.loads(a.text)["text"] for a in answers] == [f"q{k}" for k in range(n)]
    budget = engine.pixel_budget
    assert [json.loads(a.text)["image"] for a in answers] == [image_key(resize_to_budget(picture(k), *budget))
                                                              for k in range(n)]


# -- faults ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("api", ["ollama", "openai"])
@pytest.mark.parametrize("fault", ["500", "hang", "drop"])
def test_transient_fault_is_retried(api, fault, tmp_path):
    """An error status, a request that times out, a connection closed without an answer: sent again."""
    with FakeServer(models=[QWEN_TAG, QWEN_ID], faults={0: fault}) as server:
        engine = engine_for(api, server, tmp_path, *FAST)
        answers = engine.generate([smoke_request(picture(0), "q0"), smoke_request(picture(1), "q1")])
    assert [c["outcome"] for c in server.chats] == [fault, "answered", "answered"]
    assert [a.error for a in answers] == [None, None]
    assert [json.loads(a.text)["text"] for a in answers] == ["q0", "q1"]


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_request_out_of_retries_becomes_an_error_and_the_run_goes_on(api, tmp_path):
    with FakeServer(models=[QWEN_TAG, QWEN_ID], faults={0: "500", 1: "500"}) as server:
        engine = engine_for(api, server, tmp_path, *FAST, "engine.max_retries=1")
        answers = engine.generate([smoke_request(picture(0), "q0"), smoke_request(picture(1), "q1")])
        answers += engine.generate([smoke_request(picture(2), "q2")])
    assert [c["outcome"] for c in server.chats] == ["500", "500", "answered", "answered"]
    assert answers[0].text == "" and answers[0].error.startswith("HTTP 500")
    assert answers[0].error.endswith("(gave up after 1 retries)")
    assert [a.error for a in answers[1:]] == [None, None]
    answered = [echo(smoke_request(picture(k), f"q{k}")) for k in (1, 2)]
    assert engine.run_metrics()["completion_tokens_total"] == sum(r.completion_tokens for r in answered)


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_malformed_body_is_an_error_not_retried(api, tmp_path):
    with FakeServer(models=[QWEN_TAG, QWEN_ID], faults={0: "malformed"}) as server:
        engine = engine_for(api, server, tmp_path, *FAST)
        answers = engine.generate([smoke_request(picture(0), "q0"), smoke_request(picture(1), "q1")])
    assert [c["outcome"] for c in server.chats] == ["malformed", "answered"]
    assert answers[0].error.startswith("malformed response") and answers[0].text == ""
    assert answers[1].error is None


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_client_error_is_not_retried(api, tmp_path):
    """A 404 (the model was removed after start-up) would fail the same way again."""
    with FakeServer(models=[QWEN_TAG, QWEN_ID]) as server:
        engine = engine_for(api, server, tmp_path, *FAST)
        server.models.clear()
        (answer,) = engine.generate([smoke_request(picture(0))])
    assert len(server.chats) == 1
    assert answer.error.startswith("HTTP 404")


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_server_gone_stops_the_run_with_one_clear_message(api, tmp_path):
    with FakeServer(models=[QWEN_TAG, QWEN_ID]) as server:
        engine = engine_for(api, server, tmp_path, *FAST, "engine.max_retries=1", "engine.max_consecutive_failures=2")
        (ok,) = engine.generate([smoke_request(picture(0))])
        server.stop()  # connections are refused from now on
        (first,) = engine.generate([smoke_request(picture(1))])
        with pytest.raises(EngineError) as stopped:
            engine.generate([smoke_request(picture(2))])
        with pytest.raises(EngineError):  # and stays stopped, without sending anything
            engine.generate([smoke_request(picture(3))])
    assert ok.error is None
    assert first.error == "connection refused (gave up after 1 retries)"
    message = str(stopped.value)
    assert "127.0.0.1" in message and "stopped answering: 2 requests in a row failed (connection refused)" in message
    assert "rerun the same command to resume" in message and "\n" not in message


def test_success_in_between_resets_the_count_of_failures(tmp_path):
    with FakeServer(models=[QWEN_TAG], faults={0: "500", 2: "500"}) as server:
        engine = engine_for("ollama", server, tmp_path, *FAST, "engine.max_retries=0",
                            "engine.max_consecutive_failures=2")
        answers = [engine.generate([smoke_request(picture(k))])[0] for k in range(3)]
    assert [a.error is None for a in answers] == [False, True, False]


# -- start-up checks ------------------------------------------------------------------------------
def test_ollama_unreachable(tmp_path, monkeypatch):
    port = closed_port()
    monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{port}")
    with pytest.raises(EngineError) as error:
        build_engine(tmp_path, "engine=ollama")
    assert str(error.value) == (f"cannot reach the Ollama server at http://127.0.0.1:{port} (from OLLAMA_HOST): "
                                "connection refused; start it with `ollama serve`, or set OLLAMA_HOST (or "
                                "engine.host) to a running one")


def test_ollama_tag_missing(server, tmp_path):
    server.models.remove(QWEN_TAG)
    with pytest.raises(EngineError) as error:
        engine_for("ollama", server, tmp_path)
    assert str(error.value) == (f"the Ollama server at {server.ollama_host} does not have the model qwen2.5vl:7b: "
                                "run `ollama pull qwen2.5vl:7b` there (or set engine.pull=true)")
    assert "POST /api/pull" not in server.calls


def test_ollama_pull_fetches_a_missing_tag(tmp_path):
    with FakeServer(models=[], pullable=[QWEN_TAG]) as server:
        engine = engine_for("ollama", server, tmp_path, "engine.pull=true")
        (answer,) = engine.generate([smoke_request(picture(0))])
    assert server.calls[:4] == ["GET /api/tags", "POST /api/show", "POST /api/pull", "POST /api/show"]
    assert answer.error is None


def test_ollama_pull_of_an_unknown_tag_fails_in_one_line(tmp_path):
    with FakeServer(models=[]) as server, pytest.raises(EngineError) as error:
        engine_for("ollama", server, tmp_path, "engine.pull=true", "engine.model_tag=qwen2.5-vl:7b")
    assert str(error.value) == (f"`ollama pull qwen2.5-vl:7b` failed on {server.ollama_host}: "
                                "pull model manifest: file does not exist")


def test_ollama_model_without_vision(tmp_path):
    with FakeServer(models=["qwen2.5:7b"], capabilities=["completion", "tools"]) as server:
        engine = engine_for("ollama", server, tmp_path, "engine.model_tag=qwen2.5:7b")
        with pytest.raises(EngineError, match=r"model qwen2.5:7b .* cannot read images"):
            engine.generate([smoke_request(picture(0))])
        assert server.chats == []


def test_ollama_needs_a_tag(tmp_path):
    with pytest.raises(ConfigError, match=r"^model=tiny has no model.ollama_tag: set engine.model_tag=TAG"):
        build_engine(tmp_path, "engine=ollama", model="tiny")


def test_openai_unreachable(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(EngineError) as error:
        build_engine(tmp_path, "engine=openai", f"engine.base_url={url}")
    assert str(error.value).startswith(f"cannot reach the OpenAI-compatible server at {url}: connection refused")


def test_openai_model_not_served(server, tmp_path):
    server.models.remove(QWEN_ID)
    with pytest.raises(EngineError) as error:
        engine_for("openai", server, tmp_path)
    assert str(error.value) == (f"the OpenAI-compatible server at {server.openai_base_url} does not serve the model "
                                f"{QWEN_ID} (it serves: {QWEN_TAG}); set engine.model_name to one of them")


def test_openai_refused_key_is_named_by_variable_never_by_value(server, tmp_path, monkeypatch):
    server.api_key = "sk-right"
    monkeypatch.setenv("VLMEXP_TEST_KEY", "sk-wrong-91c3")
    with pytest.raises(EngineError) as error:
        engine_for("openai", server, tmp_path, "engine.api_key_env=VLMEXP_TEST_KEY")
    assert "VLMEXP_TEST_KEY" in str(error.value) and "sk-wrong" not in str(error.value)
    assert "HTTP 401" in str(error.value)


def test_openai_needs_a_model_name(tmp_path):
    with pytest.raises(ConfigError, match=r"^model=tiny has no model.hf_id: set engine.model_name=NAME"):
        build_engine(tmp_path, "engine=openai", model="tiny")


@pytest.mark.parametrize("key,value", [("concurrency", 0), ("max_retries", -1), ("timeout_s", 0)])
def test_bad_engine_settings(server, tmp_path, key, value):
    with pytest.raises(ConfigError, match=rf"^engine.{key}={value}: must be"):
        engine_for("ollama", server, tmp_path, f"engine.{key}={value}")


# -- metrics --------------------------------------------------------------------------------------
def test_ollama_metrics_come_from_the_server_timings(server, tmp_path):
    engine = engine_for("ollama", server, tmp_path)
    requests = [smoke_request(picture(k), f"q{k}") for k in range(3)]
    engine.generate(requests)
    replies = [echo(r) for r in requests]
    prompt, completion = sum(r.prompt_tokens for r in replies), sum(r.completion_tokens for r in replies)
    metrics = engine.run_metrics()
    assert metrics["prompt_tokens_total"] == prompt and metrics["completion_tokens_total"] == completion
    # the server reports 10 ms per answer token, 1 ms per prompt token, a 0.5 s load then 1 ms loads
    assert metrics["tokens_per_s"] == pytest.approx(100.0)
    assert metrics["prompt_tokens_per_s"] == pytest.approx(1000.0)
    assert metrics["model_load_s"] == pytest.approx(0.502)


def test_openai_metrics_come_from_usage(server, tmp_path):
    engine = engine_for("openai", server, tmp_path)
    requests = [smoke_request(picture(k), f"q{k}") for k in range(3)]
    answers = engine.generate(requests)
    replies = [echo(r) for r in requests]
    metrics = engine.run_metrics()
    assert metrics["prompt_tokens_total"] == sum(r.prompt_tokens for r in replies)
    assert metrics["completion_tokens_total"] == sum(r.completion_tokens for r in replies)
    assert metrics["tokens_per_s"] > 0
    assert [a.completion_tokens for a in answers] == [r.completion_tokens for r in replies]
