"""Remote engines against a real local HTTP server that answers every chat request after a fixed delay.

    python bench/remote.py                       # delay 0.2 s, 1/4/8 requests in flight, 48 requests
    python bench/remote.py --startup-only

1. Throughput: the evaluation loop (``PredictionLoop``, batches of ``engine.concurrency``) drives
   engine=ollama and engine=openai with N requests in flight; a server that answers after L seconds
   allows at most N/L requests/s: printed with the ratio reached (target >= 0.8).
2. Start-up: ``python -X importtime -m vlmexp task=smoke engine=ollama ...`` in a fresh process;
   seconds from starting it to the server receiving the first chat request (target <= 2 s), whether
   torch or transformers were imported, and the slowest imports before then.
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


def throughput(kind: str, in_flight: int, delay_s: float, requests, folder: Path) -> float:
    from vlmexp.engines.ollama import OllamaEngine
    from vlmexp.engines.openai import OpenAIEngine
    from vlmexp.evaluation.loop import PredictionLoop
    from vlmexp.evaluation.store import PredictionStore

    with FakeServer(models=[TAG], delay_s=delay_s) as server:
        if kind == "ollama":
            engine = OllamaEngine(host=server.ollama_host, model_tag=TAG, concurrency=in_flight)
        else:
            engine = OpenAIEngine(base_url=server.openai_base_url, model_name=TAG, api_key_env=None,
                                  concurrency=in_flight)
        samples = [_Sample((f"s{i}", r)) for i, r in enumerate(requests)]
        began = time.perf_counter()
        PredictionLoop().run(_Echo(), engine, samples, PredictionStore(folder / f"{kind}-{in_flight}.jsonl"))
        seconds = time.perf_counter() - began
        engine.close()
    return len(requests) / seconds


def startup(cache: str, folder: Path) -> dict:
    from vlmexp.data.synthetic_smoke import generate_smoke_dataset

    test_split = generate_smoke_dataset(cache)["test"]
    arrivals: list[float] = []
    with FakeServer(models=[TAG], delay_s=lambda request: arrivals.append(time.perf_counter()) or 0.0) as server:
        env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
        began = time.perf_counter()
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "vlmexp", "task=smoke", "model=qwen7b",
                                 "engine=ollama", "mode=eval", f"paths.cache_dir={folder / 'cache'}",
                                 f"data.root={test_split}", "data.limit=4", "logger=none", "resume=false",
                                 f"engine.host={server.ollama_host}", f"hydra.run.dir={folder / 'run'}"],
                                cwd=folder, env=env, capture_output=True, text=True)
    if result.returncode or not arrivals:
        sys.exit(result.stderr[-3000:])
    imports = []
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (part.strip() for part in line[len("import time:"):].split("|"))
            if cumulative.isdigit():
                imports.append((int(cumulative), name))
    top = [name for _, name in sorted(imports, reverse=True) if "." not in name][:8]
    names = {name.strip().split(".")[0] for _, name in imports}
    return {"first_request_s": round(arrivals[0] - began, 2), "torch_imported": "torch" in names,
            "transformers_imported": "transformers" in names, "slowest_top_level_imports": top}


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
    print(f"engine=ollama: first request {result['first_request_s']} s after start; torch imported: "
          f"{result['torch_imported']}, transformers imported: {result['transformers_imported']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
