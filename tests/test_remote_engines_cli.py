"""engine=ollama / engine=openai through the real command line and runner: start-up errors in one
line, a server that goes away mid-run and a rerun that resumes, nothing of Hugging Face loaded,
and an API key that never reaches the logs or MLflow."""

from __future__ import annotations

import json

import mlflow
import pytest

from tests.conftest import compose_config, run_cli
from tests.fake_servers import FakeServer, closed_port
from vlmexp.evaluation.store import PredictionStore
from vlmexp.paths import expand
from vlmexp.provenance import config_fingerprint
from vlmexp.runner import run

QWEN_TAG, QWEN_ID = "qwen2.5vl:7b", "Qwen/Qwen2.5-VL-7B-Instruct"

def eval_args(cache_dir, *extra: str) -> list[str]:
    return ["task=smoke", "model=qwen7b", "mode=eval", f"paths.cache_dir={cache_dir}", "logger=none", *extra]


def assert_one_line_error(result, expected: str) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {expected}"]


@pytest.fixture
def server():
    with FakeServer(models=[QWEN_ID]) as s:  # serves the OpenAI name of qwen7b, not its Ollama tag
        yield s


@pytest.mark.parametrize("case", ["ollama-unreachable", "ollama-tag-missing", "ollama-no-tag", "openai-unreachable",
                                  "openai-model-missing"])
def test_start_up_errors_are_one_line(case, server, cache_dir, tmp_path):
    port = closed_port()
    args, env = {
        "ollama-unreachable": (["engine=ollama"], {"OLLAMA_HOST": f"http://127.0.0.1:{port}"}),
        "ollama-tag-missing": (["engine=ollama", f"engine.host={server.ollama_host}"], {}),
        "ollama-no-tag": (["engine=ollama", "model=tiny"], {}),
        "openai-unreachable": (["engine=openai", f"engine.base_url=http://127.0.0.1:{port}/v1"], {}),
        "openai-model-missing": (["engine=openai", f"engine.base_url={server.openai_base_url}",
                                  "engine.model_name=qwen2.5-vl-7b"], {}),
    }[case]
    expected = {
        "ollama-unreachable": f"cannot reach the Ollama server at http://127.0.0.1:{port} (from OLLAMA_HOST): "
                              "connection refused; start it with `ollama serve`, or set OLLAMA_HOST (or engine.host) "
                              "to a running one",
        "ollama-tag-missing": f"the Ollama server at {server.ollama_host} does not have the model {QWEN_TAG}: "
                              f"run `ollama pull {QWEN_TAG}` there (or set engine.pull=true)",
        "ollama-no-tag": "model=tiny has no model.ollama_tag: set engine.model_tag=TAG (a name from `ollama list`, "
                         "e.g. qwen2.5vl:7b)",
        "openai-unreachable": f"cannot reach the OpenAI-compatible server at http://127.0.0.1:{port}/v1: connection "
                              "refused; start it (e.g. `vllm serve Qwen/Qwen2.5-VL-7B-Instruct`) or set "
                              "engine.base_url",
        "openai-model-missing": f"the OpenAI-compatible server at {server.openai_base_url} does not serve the model "
                                f"qwen2.5-vl-7b (it serves: {QWEN_ID}); set engine.model_name to one of them",
    }[case]
    result = run_cli(eval_args(cache_dir, "data.limit=2", *args), cwd=tmp_path, env=env, timeout=300)
    assert_one_line_error(result, expected)


def test_server_gone_mid_run_then_rerun_resumes(tmp_path):
    """The server answers 5 requests and goes away: the run stops with one line and keeps those 5;
    the rerun against the server back on the same port sends exactly the other 3."""
    cache_dir = tmp_path / "cache"  # its own, so the one work dir of this config is the one it finds
    args = eval_args(cache_dir, "engine=ollama", "data.limit=8", "engine.concurrency=2", "engine.max_retries=1",
                     "engine.backoff_s=0.01", "engine.max_consecutive_failures=2")
    first = FakeServer(models=[QWEN_TAG], answer_limit=5)
    port = first.port
    try:
        broken = run_cli([*args, f"engine.host={first.ollama_host}", "resume=false"], cwd=tmp_path, timeout=300)
    finally:
        first.stop()
    assert broken.returncode == 2 and "Traceback" not in broken.stdout + broken.stderr
    lines = broken.stderr.strip().splitlines()  # the progress bar, then the error
    (line,) = [ln for ln in lines if ln.startswith("error:")]
    assert line == lines[-1]
    assert line.startswith(f"error: the Ollama server at http://127.0.0.1:{port} stopped answering: 2 requests in a "
                           "row failed")
    assert line.endswith("rerun the same command to resume once it is back")

    answered_first = [c for c in first.chats if c["outcome"] == "answered"]
    assert len(answered_first) == 5

    with FakeServer(models=[QWEN_TAG], port=port) as second:
        resumed = run_cli([*args, f"engine.host={second.ollama_host}"], cwd=tmp_path, timeout=300)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
        assert "resuming, 5 of 8 samples already done" in resumed.stdout
        answered_second = [c for c in second.chats if c["outcome"] == "answered"]
    assert len(answered_second) == len(second.chats) == 3

    fingerprint = config_fingerprint(compose_config(args), "eval")
    (work_dir,) = (expand(cache_dir) / "runs" / "smoke").glob(f"{fingerprint}-*")
    store = work_dir / "predictions.jsonl"
    records = list(PredictionStore(store).load().values())
    assert len(records) == 8 and all(r["error"] is None for r in records)
    sent_first = {c["body"]["messages"][-1]["images"][0] for c in answered_first}
    sent_second = {c["body"]["messages"][-1]["images"][0] for c in answered_second}
    assert not sent_first & sent_second  # nothing answered was sent again
    answered_images = {json.loads(r["raw"])["image"] for r in records}
    assert len(answered_images) == 8  # every sample has its own answer


def test_engine_ollama_loads_nothing_of_hugging_face(cache_dir, tmp_path):
    """No weights, processor or tokenizer: vlmexp's model loading, peft and every transformers model family
    stay unimported and no model is built. (torchmetrics, which computes map_iou40 once a frame has smoke,
    imports transformers' auto classes for its own text metrics: that is not a model being loaded.)"""
    from vlmexp.data.synthetic_smoke import generate_smoke_dataset

    test_split = generate_smoke_dataset(str(cache_dir))["test"]
    fresh = tmp_path / "cache"
    with FakeServer(models=[QWEN_TAG]) as server:
        result = run_cli(["task=smoke", "model=qwen7b", "engine=ollama", "mode=eval", f"paths.cache_dir={fresh}",
                          f"data.root={test_split}", "data.limit=2", "logger=none",
                          f"engine.host={server.ollama_host}"],
                         cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1", "HF_HUB_OFFLINE": "1"}, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(server.chats) == 2
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert {"ollama", "httpx", "PIL"} <= imported  # what the run needed was imported, and recorded
    families = {m for m in imported if m.startswith("transformers.models.")} - {
        "transformers.models", "transformers.models.auto", "transformers.models.encoder_decoder"}
    families = {m for m in families if not m.startswith(("transformers.models.auto.",
                                                          "transformers.models.encoder_decoder."))}
    assert not families
    assert not {m for m in imported if m.split(".")[0] == "peft" or m.startswith("vlmexp.models")}
    assert not (fresh / "models").exists()


def test_api_key_is_used_but_never_logged(cache_dir, tmp_path, monkeypatch, caplog):
    secret = "sk-test-0d5e7a1c"
    monkeypatch.setenv("VLMEXP_TEST_KEY", secret)
    caplog.set_level("DEBUG")
    with FakeServer(models=[QWEN_ID], api_key=secret) as server:
        cfg = compose_config(["task=smoke", "model=qwen7b", "mode=eval", f"paths.cache_dir={cache_dir}", "data.limit=2",
                              "engine=openai", f"engine.base_url={server.openai_base_url}",
                              "engine.api_key_env=VLMEXP_TEST_KEY", "resume=false"])
        metrics = run(cfg, output_dir=tmp_path / "out")
    assert metrics["engine_errors"] == 0.0
    assert [c["authorization"] for c in server.chats] == [f"Bearer {secret}"] * 2

    (logged,) = mlflow.search_runs(experiment_names=["smoke"], output_format="list")
    assert logged.data.params["engine.api_key_env"] == "VLMEXP_TEST_KEY"
    assert not [k for k, v in logged.data.params.items() if secret in v]
    assert secret not in caplog.text
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaks == []  # not in mlflow.db, the artifacts or the run folder
