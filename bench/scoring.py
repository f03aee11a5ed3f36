"""Candidate scoring vs batched generation on the smoke images, same model and batch size.

    python bench/scoring.py                      # random tiny model, 48 images, batch 16
    python bench/scoring.py --checkpoint DIR     # e.g. the quickstart's fine-tuned checkpoint

Prints images/s of ``HFEngine.generate`` (answers of up to --max-new-tokens tokens: the random tiny
model never stops early, so every answer has that many, about the length of the smoke task's JSON),
of ``HFEngine.score`` with two candidates (one prompt pass, candidates from the cached keys/values),
of scoring every (prompt, candidate) text in full (how scoring worked before), and the ratios.
Target: scoring >= 3x batched generation.
"""

from __future__ import annotations

import json
import tempfile

from _common import bench_arguments, header, interleaved, load, parse, smoke_images, smoke_request


def main() -> None:
    parser = bench_arguments(__doc__)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--candidates", default="no,yes", help="comma-separated answers to score")
    args = parse(parser)

    from vlmexp.engines.hf import HFEngine

    cache = args.cache_dir or tempfile.mkdtemp(prefix="vlmexp-bench-")
    _, model, processor = load(args.checkpoint, cache)
    requests = [smoke_request(img, args.max_new_tokens) for img in smoke_images(args.images, cache)]
    candidates = args.candidates.split(",")
    engine = HFEngine(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, model=model,
                      processor=processor)

    def whole_texts() -> None:
        for start in range(0, len(requests), max(1, args.batch_size // len(candidates))):
            chunk = requests[start:start + max(1, args.batch_size // len(candidates))]
            engine._score_chunk_whole(chunk, [engine._prompt_text(r) for r in chunk], candidates)

    engine.generate(requests[:args.batch_size])  # warm-up
    tokens = [g.completion_tokens for g in engine.generate(requests)]
    secs = interleaved({"generate": lambda: engine.generate(requests),
                        "score": lambda: engine.score(requests, candidates),
                        "score_whole_texts": whole_texts}, args.repeats)
    rate = {k: len(requests) / v for k, v in secs.items()}
    print(header())
    print(f"# {len(requests)} images, batch {args.batch_size}, candidates {candidates}, "
          f"generated tokens per answer {sum(tokens) / len(tokens):.1f}")
    for name, value in rate.items():
        print(f"{name:>18}: {value:8.1f} images/s")
    result = {"generate_images_s": round(rate["generate"], 1), "score_images_s": round(rate["score"], 1),
              "score_whole_texts_images_s": round(rate["score_whole_texts"], 1),
              "score_vs_generate": round(rate["score"] / rate["generate"], 2),
              "score_vs_whole_texts": round(rate["score"] / rate["score_whole_texts"], 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
