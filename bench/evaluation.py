"""The evaluation loop (``python -m vlmexp``'s path) vs a per-image loop, on the smoke frames.

    python bench/evaluation.py                      # random tiny model, 48 frames, batch 16
    python bench/evaluation.py --checkpoint DIR     # e.g. the quickstart's fine-tuned checkpoint

vlmexp's path is ``PredictionLoop`` running the smoke task with ``HFEngine``: frames read from disk,
requests built, answers parsed into records and appended (flushed, synced) to a fresh predictions
file, the next batch built and encoded while the current one generates. ``sequential`` is the same
task, engine and store with one batch after the other (no overlap). The baseline is the seed
write-ups' loop: open the frame, chat template, processor and ``model.generate`` per image. The
answers are checked to be identical before anything is timed.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from _common import SYSTEM, USER, bench_arguments, generate_one, interleaved, load, parse, print_rates


def per_image_loop(model, processor, paths, max_new_tokens: int) -> list[str]:
    from vlmexp.data.images import open_image
    from vlmexp.tasks.smoke import SmokeTask

    task = SmokeTask(system_prompt=SYSTEM, user_prompt=USER, max_new_tokens=max_new_tokens)
    return [generate_one(model, processor, task.request(open_image(path)), max_new_tokens) for path in paths]


def main() -> None:
    parser = bench_arguments(__doc__)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parse(parser)

    from vlmexp.data.smoke import load_sequences
    from vlmexp.data.synthetic_smoke import generate_smoke_dataset
    from vlmexp.engines.hf import HFEngine
    from vlmexp.evaluation.loop import PredictionLoop
    from vlmexp.evaluation.store import PredictionStore
    from vlmexp.tasks.smoke import SmokeTask

    cache = args.cache_dir or tempfile.mkdtemp(prefix="vlmexp-bench-")
    _, model, processor = load(args.checkpoint, cache)
    frames = load_sequences(Path(generate_smoke_dataset(cache)["train"]), {0})[:args.images]
    task = SmokeTask(system_prompt=SYSTEM, user_prompt=USER, max_new_tokens=args.max_new_tokens)
    engine = HFEngine(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, model=model,
                      processor=processor)
    out = Path(tempfile.mkdtemp(prefix="vlmexp-bench-eval-"))
    runs = iter(range(10 ** 6))

    def evaluation_loop() -> list[dict]:
        store = PredictionStore(out / f"predictions-{next(runs)}.jsonl")
        return PredictionLoop().run(task, engine, frames, store, desc="bench")

    def sequential() -> None:
        store = PredictionStore(out / f"predictions-{next(runs)}.jsonl")
        for start in range(0, len(frames), args.batch_size):
            store.append(task.predict(engine, frames[start:start + args.batch_size]))

    def loop() -> list[str]:
        return per_image_loop(model, processor, [f.path for f in frames], args.max_new_tokens)

    try:
        reference = loop()  # also the warm-up
        answers = [r["raw"] for r in evaluation_loop()]
        mismatches = sum(a != r for a, r in zip(answers, reference))
        if mismatches:
            print(f"# warning: {mismatches} of {len(frames)} answers differ from the loop's")
        secs = interleaved({"loop": loop, "evaluation_loop": evaluation_loop, "sequential": sequential},
                           args.repeats)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    rate = {k: len(frames) / v for k, v in secs.items()}
    note = f"# {len(frames)} frames, batch {args.batch_size}, up to {args.max_new_tokens} new tokens per answer"
    print_rates(rate, note, {"evaluation_loop_vs_sequential": round(rate["evaluation_loop"] / rate["sequential"], 2)})

if __name__ == "__main__":
    main()
