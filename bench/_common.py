"""What the CPU benchmarks share: the model, the smoke-task images and requests, interleaved timing.

Every benchmark times vlmexp's path and its baseline in one process, alternating them repetition by
repetition, so load from other processes on a shared machine hits both alike; ratios are the figure.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

SYSTEM = ("You are an early-fire detection agent. Answer ONLY with a valid JSON matching this schema: "
          '{"has_smoke": bool, "bbox": [x_center, y_center, width, height]}.')
USER = "Is there wildfire smoke in this image? Give the box of the smoke, normalised to 0..1."


def bench_arguments(doc: str, *, model: bool = True, images: int = 48):
    """The options every CPU benchmark takes (model, images, repeats, cache, threads), on a parser the
    caller extends; ``parse(parser)`` reads them and applies ``--threads``."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if model:
        parser.add_argument("--checkpoint", default=None, help="model folder (default: the random tiny model)")
        parser.add_argument("--images", type=int, default=images)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads(N); 1 (default) is steadiest on a shared machine")
    return parser


def parse(parser):
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return args


def header() -> str:
    from importlib.metadata import version

    names = ("torch", "transformers", "accelerate")
    return (f"# {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
            + ", ".join(f"{n} {version(n)}" for n in names))


def model_cfg(min_pixels: int = 3136, max_pixels: int = 12544):
    from omegaconf import OmegaConf

    return OmegaConf.create({"name": "bench", "trust_remote_code": False, "min_pixels": min_pixels,
                             "max_pixels": max_pixels})


def load(checkpoint: str | None, cache_dir: str, device: str = "cpu", dtype: str = "float32"):
    """(checkpoint folder, model, processor): ``checkpoint`` or the tiny model built in ``cache_dir``,
    with its patch embedding switched to a matrix product as vlmexp's adapter loads it (the baselines
    run the same model object)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from vlmexp.models.loading import load_processor
    from vlmexp.models.patch_projection import project_patches_by_matmul
    from vlmexp.models.tiny import build_tiny_checkpoint

    folder = checkpoint or build_tiny_checkpoint(cache_dir)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=getattr(torch, dtype)).to(device).eval()
    project_patches_by_matmul(model)
    return folder, model, load_processor(folder, model_cfg())


def smoke_images(n: int, cache_dir: str) -> list:
    """``n`` frames of the generated smoke set (160x120 JPEGs), decoded."""
    from vlmexp.data.images import open_image
    from vlmexp.data.synthetic_smoke import generate_smoke_dataset

    root = Path(generate_smoke_dataset(cache_dir)["train"])
    paths = sorted(root.rglob("*.jpg"))[:n]
    return [open_image(p) for p in paths]


def smoke_request(image, max_new_tokens: int):
    from vlmexp.messages import ChatRequest, ImagePart, TextPart, chat

    return ChatRequest(chat(SYSTEM, ImagePart(image), TextPart(USER)), max_new_tokens=max_new_tokens)


def interleaved(paths: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall seconds of each path over ``repeats`` rounds; each round runs every path once,
    in an order rotated from round to round."""
    names = list(paths)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            began = time.perf_counter()
            paths[name]()
            times[name].append(time.perf_counter() - began)
    return {n: statistics.median(t) for n, t in times.items()}


def generate_one(model, processor, request, max_new_tokens: int) -> str:
    """The seed-000-style baseline for one request: the processor and ``generate`` on it alone."""
    import torch

    from vlmexp.models.adapters.transformers import to_chat_template

    text = processor.apply_chat_template(to_chat_template(request), add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=list(request.images), return_tensors="pt").to(model.device)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()


def print_rates(rate: dict[str, float], note: str, extra: dict[str, float] | None = None) -> None:
    """Each path's images/s and its ratio to ``rate['loop']``, then one JSON line: every rate, every
    ``<path>_vs_loop`` ratio and ``extra``."""
    print(header())
    print(note)
    width = max(len(k) for k in rate)
    for name, value in rate.items():
        print(f"{name:>{width}}: {value:8.1f} images/s  ({value / rate['loop']:.2f}x the loop)")
    print(json.dumps({**{f"{k}_images_s": round(v, 1) for k, v in rate.items()},
                      **{f"{k}_vs_loop": round(v / rate["loop"], 2) for k, v in rate.items() if k != "loop"},
                      **(extra or {})}))
