"""Smoke-evaluation throughput of a Qwen2.5-VL model on a GPU: batch sizes x attention kernels, peak memory.

    python bench/gpu.py --model Qwen/Qwen2.5-VL-3B-Instruct          # or a local folder, or ...-7B-...
    python bench/gpu.py --model <tiny folder> --device cpu --dtype float32 --batch-sizes 1,8

For each attention kernel (sdpa, and flash_attention_2 when flash-attn is installed) the model is
loaded once in --dtype; for each batch size ``HFEngine.generate`` answers the smoke prompt for
--images frames of the generated smoke set (resized to --image-size) and, with --score, scores two
candidates for them. The patch embedding runs as a matrix product, as vlmexp loads the model
(``--patch-embedding conv`` keeps the checkpoint's convolution, for comparison). Prints ONE JSON
line: images/s, generated tokens/s and peak GPU memory per (kernel, batch size), with the versions
and the device.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import tempfile
import time

from _common import model_cfg, smoke_images, smoke_request


def kernels(requested: str) -> list[str]:
    names = [k for k in requested.split(",") if k]
    return [k for k in names if k != "flash_attention_2" or importlib.util.find_spec("flash_attn") is not None]


def peak_memory_gib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def measure(engine, requests, device: str, score: bool) -> dict:
    import torch

    engine.generate(requests[:engine.batch_size])  # warm-up: kernels, allocator
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    answers = engine.generate(requests)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    row = {"images_s": round(len(requests) / seconds, 2),
           "tokens_s": round(sum(a.completion_tokens for a in answers) / seconds, 1),
           "peak_memory_gib": peak_memory_gib(device)}
    if score:
        began = time.perf_counter()
        engine.score(requests, ["no", "yes"])
        if device == "cuda":
            torch.cuda.synchronize()
        row["score_images_s"] = round(len(requests) / (time.perf_counter() - began), 2)
        row["peak_memory_gib"] = peak_memory_gib(device)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen/Qwen2.5-VL-3B-Instruct", help="Hub id or local folder")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--attn", default="sdpa,flash_attention_2", help="kernels to try, in order")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--image-size", default="640x480", help="WxH the frames are resized to")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--min-pixels", type=int, default=200704)
    parser.add_argument("--max-pixels", type=int, default=1003520)
    parser.add_argument("--score", action="store_true", help="also time scoring two candidates")
    parser.add_argument("--patch-embedding", choices=("matmul", "conv"), default="matmul",
                        help="matmul: as vlmexp loads the model (vlmexp.models.patch_projection); "
                             "conv: the checkpoint's Conv3d as transformers runs it")
    parser.add_argument("--cache-dir", default=None, help="where the smoke frames are generated")
    args = parser.parse_args()

    from importlib.metadata import version

    import torch
    from transformers import AutoModelForImageTextToText

    from vlmexp.engines.hf import HFEngine
    from vlmexp.models.loading import load_processor
    from vlmexp.models.patch_projection import project_patches_by_matmul

    width, height = (int(v) for v in args.image_size.lower().split("x"))
    cache = args.cache_dir or tempfile.mkdtemp(prefix="vlmexp-bench-")
    frames = [img.resize((width, height)) for img in smoke_images(args.images, cache)]
    requests = [smoke_request(img, args.max_new_tokens) for img in frames]
    processor = load_processor(args.model, model_cfg(args.min_pixels, args.max_pixels))
    results = []
    for attn in kernels(args.attn):
        model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=getattr(torch, args.dtype),
                                                            attn_implementation=attn).to(args.device).eval()
        if args.patch_embedding == "matmul":
            project_patches_by_matmul(model)
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            engine = HFEngine(batch_size=batch_size, max_new_tokens=args.max_new_tokens, model=model,
                              processor=processor)
            try:
                row = measure(engine, requests, args.device, args.score)
            except torch.OutOfMemoryError:
                row = {"error": "out of memory"}
            results.append({"attn": attn, "batch_size": batch_size, **row})
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.machine()} CPU"
    print(json.dumps({"model": args.model, "device": device, "dtype": args.dtype, "images": len(requests),
                      "image_size": args.image_size, "patch_embedding": args.patch_embedding,
                      "max_new_tokens": args.max_new_tokens,
                      "torch": version("torch"), "transformers": version("transformers"), "results": results}))


if __name__ == "__main__":
    main()
