"""engine=openai against a real llama.cpp ``llama-server`` (built by ``.ci/build-llama-server`` from the
llama-cpp-python sdist, its path in ``$VLMEXP_LLAMA_SERVER``) serving the tiny checkpoint converted to GGUF
with llama.cpp's own converter, at the server's default settings (image token budget included): with the
client resizing images to the model's pixel budget, the server sees the pixels the HF processor sees, and
answers as engine=hf does on the same frames."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import compose_config
from tests.fake_servers import closed_port
from vlmexp.runner import run

ALIAS = "vlmexp-tiny"


def _server_binary() -> Path:
    path = os.environ.get("VLMEXP_LLAMA_SERVER")
    if not path:
        reason = os.environ.get("VLMEXP_LLAMA_SERVER_UNAVAILABLE")
        pytest.skip(f"llama-server could not be built here: {reason}" if reason else
                    "no llama-server: run .ci/build-llama-server and set VLMEXP_LLAMA_SERVER to the path it prints "
                    "(.ci/run does both)")
    binary = Path(path)
    vendor = binary.parent.parent / "vendor" / "llama.cpp"
    assert binary.is_file() and (vendor / "convert_hf_to_gguf.py").is_file(), \
        f"{path}: not a .ci/build-llama-server build"
    return binary


def _convert(checkpoint: str, vendor: Path, out: Path) -> tuple[Path, Path]:
    model, mmproj = out / "tiny-f32.gguf", out / "tiny-mmproj-f32.gguf"
    script = Path(__file__).with_name("llama_convert.py")
    for target, extra in ((model, []), (mmproj, ["--mmproj"])):
        done = subprocess.run([sys.executable, str(script), str(vendor), checkpoint, "--outtype", "f32", *extra,
                               "--outfile", str(target)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    return model, mmproj


class LlamaServer:
    """``llama-server -m MODEL --mmproj MMPROJ`` on 127.0.0.1 with nothing else set, until the context ends."""

    def __init__(self, binary: Path, model: Path, mmproj: Path, log: Path):
        self.port = closed_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.command = [str(binary), "-m", str(model), "--mmproj", str(mmproj), "--host", "127.0.0.1",
                        "--port", str(self.port), "--alias", ALIAS]
        self.log = log

    def __enter__(self) -> LlamaServer:
        self.process = subprocess.Popen(self.command, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError("llama-server did not become ready in 120 s: " + self.log.read_text()[-3000:])

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_llama_server_answers_as_engine_hf(tiny_checkpoint, cache_dir, tmp_path):
    binary = _server_binary()
    model, mmproj = _convert(tiny_checkpoint, binary.parent.parent / "vendor" / "llama.cpp", tmp_path)
    # The quickstart's generated smoke set: 160 x 120 frames, 10 sequences of 8; the first 16 frames.
    common = ["task=smoke", "mode=eval", "model=tiny", f"paths.cache_dir={cache_dir}", "logger=none", "resume=false",
              "data.limit=16", "eval.bootstrap=0"]
    hf = run(compose_config([*common, "engine=hf", "engine.batch_size=1"]), output_dir=tmp_path / "hf")
    remote = [*common, "engine=openai", f"engine.model_name={ALIAS}", "engine.concurrency=1",
              "+engine.json_schema=false"]
    with LlamaServer(binary, model, mmproj, tmp_path / "llama-server.log") as server:
        served = run(compose_config([*remote, f"engine.base_url={server.base_url}"]), output_dir=tmp_path / "openai")
        run(compose_config([*remote, f"engine.base_url={server.base_url}", "engine.resize=false"]),
            output_dir=tmp_path / "original")
    ours, theirs, original = (_records(tmp_path / name) for name in ("hf", "openai", "original"))
    assert [r["id"] for r in ours] == [r["id"] for r in theirs] and len(ours) == 16
    # The prompt: 114 text tokens and the image. The processor makes 112 x 84 of a 160 x 120 frame (pixel budget
    # 56*56..112*112, sides multiples of 28): 4 x 3 merged 28-pixel patches, 12 image tokens. Sent that image,
    # the server makes the same 12 at its default budget (8..4096 image tokens for Qwen2.5-VL) ...
    assert [r["prompt_tokens"] for r in ours] == [r["prompt_tokens"] for r in theirs] == [114 + 12] * 16
    # ... sent the original, it resizes by its own budget to 168 x 112: 6 x 4 = 24 image tokens.
    assert [r["prompt_tokens"] for r in original] == [114 + 24] * 16
    # Every answer is the same text, cut at the same cap. (The random tiny model's greedy answer does not depend
    # on the image: for every frame it repeats one token, so this agreement alone cannot show pixel parity; the
    # token counts above do, and tests/test_engine_parity.py checks the pixels sent.)
    assert [(r["raw"], r["completion_tokens"], r["truncated"]) for r in ours] == [
        (r["raw"], r["completion_tokens"], r["truncated"]) for r in theirs]
    assert served["parse_success_rate"] == hf["parse_success_rate"] and served["f1"] == hf["f1"]
