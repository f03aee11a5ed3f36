"""Remote engines against a real local HTTP server that answers every chat request after a fixed delay.

    python bench/remote.py                       # delay 0.2 s, 1/4/8 requests in flight, 48 requests
    python bench/remote.py --startup-only

1. Throughput: the evaluation loop (``PredictionLoop``, batches of ``engine.concurrency``) drives
   engine=ollama and engine=openai with N requests in flight; a server that answers after L seconds
   allows at most N/L requests/s: printed with the ratio reached (target >= 0.8).
2. Start-up: ``python -X importtime -m vlmexp task=smoke engine=ollama ...`` in a fresh process;
   seconds from starting it to the server receiving the first chat request (target <= 2 s), whether
   torch or transformers were imported before then (the metrics, computed after the answers, may
   import them), and the slowest imports before then.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import smoke_images, smoke_request  # noqa: E402

from tests.fake_servers import FakeServer  # noqa: E402

TAG = "qwen2.5vl:7b"


class _Echo:
    """The least task for the loop: one request per sample, the answer stored."""

    def predict(self, engine, samples):
        answers = engine.generate([request for _, request in samples])
        return [{"id": sid, "raw": a.text, "error": a.error} for (sid, _), a in zip(samples, answers)]


class _Sample(tuple):
    @property
    def id(self):
        return self[0]


SERVE = """
import sys, time
from tests.fake_servers import FakeServer
server = FakeServer(models=[sys.argv[1]], delay_s=float(sys.argv[2]))
print(server.port, flush=True)
sys.stdin.read()
"""


def throughput(kind: str, in_flight: int, delay_s: float, requests, folder: Path) -> float:
    """Requests/s through the loop against the server in a process of its own (its decoding of the
    images would otherwise take this process's interpreter lock from the engine)."""
    from vlmexp.engines.ollama import OllamaEngine
    from vlmexp.engines.openai import OpenAIEngine
    from vlmexp.evaluation.loop import PredictionLoop
    from vlmexp.evaluation.store import PredictionStore

    server = subprocess.Popen([sys.executable, "-c", SERVE, TAG, str(delay_s)], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        port = int(server.stdout.readline())
        if kind == "ollama":
            engine = OllamaEngine(host=f"http://127.0.0.1:{port}", model_tag=TAG, concurrency=in_flight)
        else:
            engine = OpenAIEngine(base_url=f"http://127.0.0.1:{port}/v1", model_name=TAG, api_key_env=None,
                                  concurrency=in_flight)
        samples = [_Sample((f"s{i}", r)) for i, r in enumerate(requests)]
        began = time.perf_counter()
        PredictionLoop().run(_Echo(), engine, samples, PredictionStore(folder / f"{kind}-{in_flight}.jsonl"))
        seconds = time.perf_counter() - began
        engine.close()
    finally:
        server.stdin.close()
        server.wait()
    return len(requests) / seconds


def startup(cache: str, folder: Path) -> dict:
    from vlmexp.data.synthetic_smoke import generate_smoke_dataset

    test_split = generate_smoke_dataset(cache)["test"]
    arrivals: list[float] = []
    with FakeServer(models=[TAG], delay_s=lambda request: arrivals.append(time.perf_counter()) or 0.0) as server:
        env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
        began = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "vlmexp", "task=smoke", "model=qwen7b",
                                 "engine=ollama", "mode=eval", f"paths.cache_dir={folder / 'cache'}",
                                 f"data.root={test_split}", "data.limit=4", "logger=none", "resume=false",
                                 f"engine.host={server.ollama_host}", f"hydra.run.dir={folder / 'run'}"],
                                cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines = [(time.perf_counter(), line) for line in proc.stderr]  # importtime lines arrive as they happen
        proc.wait()
    if proc.returncode or not arrivals:
        sys.exit("".join(line for _, line in lines[-30:]))
    before = []
    for stamp, line in lines:
        if stamp < arrivals[0] and line.startswith("import time:") and "|" in line:
            _, cumulative, name = (part.strip() for part in line[len("import time:"):].split("|"))
            if cumulative.isdigit():
                before.append((int(cumulative), name))
    names = {name.split(".")[0] for _, name in before}
    top = [f"{name} {us / 1e6:.2f}s" for us, name in sorted(before, reverse=True) if "." not in name][:6]
    return {"first_request_s": round(arrivals[0] - began, 2), "torch_imported_before": "torch" in names,
            "transformers_imported_before": "transformers" in names, "slowest_imports_before": top}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.2, help="seconds the server takes per answer")
    parser.add_argument("--in-flight", default="1,4,8")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--startup-only", action="store_true")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    cache = args.cache_dir or tempfile.mkdtemp(prefix="vlmexp-bench-")
    folder = Path(tempfile.mkdtemp(prefix="vlmexp-bench-"))
    result: dict = {}
    if not args.startup_only:
        requests = [smoke_request(img, 64) for img in smoke_images(args.requests, cache)]
        for kind in ("ollama", "openai"):
            for n in (int(v) for v in args.in_flight.split(",")):
                rate = throughput(kind, n, args.delay, requests, folder)
                ideal = n / args.delay
                print(f"{kind:>7}, {n} in flight: {rate:6.1f} requests/s of {ideal:.1f} possible ({rate / ideal:.0%})")
                result[f"{kind}_{n}_vs_ideal"] = round(rate / ideal, 3)
    result.update(startup(cache, folder))
    print(f"engine=ollama: first request {result['first_request_s']} s after start; imported before it: "
          f"torch {result['torch_imported_before']}, transformers {result['transformers_imported_before']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
