"""Batched generation (``HFEngine.generate``) vs a per-image loop, on the smoke images.

    python bench/generation.py                      # random tiny model, 48 images, batch 1, 8, 16
    python bench/generation.py --checkpoint DIR     # e.g. the quickstart's fine-tuned checkpoint

The baseline is the loop of the seed write-ups: chat template, processor and ``model.generate`` per
image, greedy. Every path answers the same requests with the same model; the answers are checked to
be identical before anything is timed. Targets: batch 16 >= 8x the loop, batch 1 no slower than it.
"""

from __future__ import annotations

import tempfile

from _common import bench_arguments, generate_one, interleaved, load, parse, print_rates, smoke_images, smoke_request


def per_image_loop(model, processor, requests, max_new_tokens: int) -> list[str]:
    return [generate_one(model, processor, request, max_new_tokens) for request in requests]


def main() -> None:
    parser = bench_arguments(__doc__)
    parser.add_argument("--batch-sizes", default="1,8,16")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parse(parser)

    from vlmexp.engines.hf import HFEngine

    cache = args.cache_dir or tempfile.mkdtemp(prefix="vlmexp-bench-")
    _, model, processor = load(args.checkpoint, cache)
    requests = [smoke_request(img, args.max_new_tokens) for img in smoke_images(args.images, cache)]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    engines = {b: HFEngine(batch_size=b, max_new_tokens=args.max_new_tokens, model=model, processor=processor)
               for b in sizes}

    reference = per_image_loop(model, processor, requests, args.max_new_tokens)  # also the warm-up
    for b, engine in engines.items():
        answers = [g.text for g in engine.generate(requests)]
        mismatches = sum(a != r for a, r in zip(answers, reference))
        if mismatches:
            print(f"# warning: batch {b}: {mismatches} of {len(requests)} answers differ from the loop's")
    paths = {"loop": lambda: per_image_loop(model, processor, requests, args.max_new_tokens)}
    paths.update({f"batch_{b}": (lambda e=e: e.generate(requests)) for b, e in engines.items()})
    secs = interleaved(paths, args.repeats)
    rate = {k: len(requests) / v for k, v in secs.items()}
    print_rates(rate, f"# {len(requests)} images, up to {args.max_new_tokens} new tokens per answer")

if __name__ == "__main__":
    main()
