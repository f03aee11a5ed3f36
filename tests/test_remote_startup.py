"""engine=ollama sends its first request before anything imports transformers or accelerate: a run
that holds no model in this process seeds no torch generator. Client-side resizing to the model's
pixel budget (engine.resize, default on) resamples with torchvision, as the HF processor does, so
torch comes in with it; with engine.resize=false nothing imports torch before the first request."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.fake_servers import FakeServer

TAG = "qwen2.5vl:7b"


@pytest.mark.parametrize("resize,not_before", [
    ("true", {"transformers", "accelerate"}),
    ("false", {"torch", "transformers", "accelerate"}),
])
def test_first_ollama_request_comes_before_model_code_is_imported(cache_dir, tmp_path, resize, not_before):
    from vlmexp.data.synthetic_smoke import generate_smoke_dataset

    test_split = generate_smoke_dataset(str(cache_dir))["test"]
    arrivals: list[float] = []
    with FakeServer(models=[TAG], delay_s=lambda request: arrivals.append(time.perf_counter()) or 0.0) as server:
        proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "vlmexp", "task=smoke", "model=qwen7b",
                                 "engine=ollama", "mode=eval", f"paths.cache_dir={tmp_path / 'cache'}",
                                 f"data.root={test_split}", "data.limit=2", "logger=none",
                                 f"engine.host={server.ollama_host}", f"engine.resize={resize}",
                                 f"hydra.run.dir={tmp_path / 'run'}"],
                                cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines = [(time.perf_counter(), line) for line in proc.stderr]  # importtime lines arrive as they happen
        assert proc.wait(timeout=300) == 0, "".join(line for _, line in lines[-20:])
    assert len(arrivals) == 2
    before = {line.split("|")[-1].strip().split(".")[0] for stamp, line in lines
              if stamp < arrivals[0] and line.startswith("import time:")}
    assert {"ollama", "httpx"} <= before  # the engine's own imports are seen
    assert not before & not_before
