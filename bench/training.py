"""vlmexp's SFT trainer vs transformers' ``Trainer`` on the quickstart's examples (tiny model, smoke set).

    python bench/training.py                 # 12 steps of batch 8, three rounds each, alternating
    python bench/training.py --baseline-workers 1   # the baseline with a DataLoader worker too

Both train the same model prepared the same way (vlmexp's freezing of the quickstart config), on the
same training examples with the same batch size, optimiser (AdamW, cosine schedule, warm-up, grad
clipping) and answer-only labels. The baseline builds each batch with one processor call over the
batch (the usual collator of Qwen2.5-VL fine-tuning scripts). vlmexp builds its batches in
``train.num_workers`` worker processes (``--workers``; by default one where a core is left for it,
as with the benchmarks' one torch thread on two cores); the baseline in ``--baseline-workers``
(default 0, ``TrainingArguments``' default). Throughput is measured from the
start of the first step to the start of the last, so model loading, validation and saving are
outside it. Target: vlmexp >= 1.0x the baseline.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import bench_arguments, header, parse


def compose(cache: str, steps: int, batch_size: int, workers: int | None):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from vlmexp.config.experiments import register_experiments
    from vlmexp.config.schema import register_configs
    from vlmexp.paths import conf_dir

    register_configs()
    register_experiments()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[
            f"paths.cache_dir={cache}", "logger=none", "hardware=cpu", "mode=train", "train.epochs=1",
            f"train.max_steps={steps}", f"train.batch_size={batch_size}",
            *([f"train.num_workers={workers}"] if workers is not None else [])])


def run_context(cfg, work: Path):
    from vlmexp.runner import RunContext
    from vlmexp.tracking.null import NullTracker

    return RunContext(cfg, work / "output", work, NullTracker(), "bench")


def vlmexp_rate(cfg, task, splits, work: Path) -> float:
    from vlmexp.trainers.sft import SFTTrainer

    class Timed(SFTTrainer):
        """The real trainer; what happens after the steps (validation, saving) is skipped."""

        resumable = False
        stamps: list[float] = []

        def loss(self, model, batch):
            self.stamps.append(time.perf_counter())
            return super().loss(model, batch)

        def validation_loss(self, model, data, accelerator):
            return 0.0

        def epoch_metrics(self, *args):
            return {}

        def keep_best(self, accelerator):
            pass

    trainer = Timed()
    trainer.stamps = []
    trainer.fit(run_context(cfg, work), task, splits)
    return rate(trainer.stamps, cfg.train.batch_size)


def baseline_rate(cfg, task, splits, work: Path, workers: int) -> float:
    import torch
    from transformers import Trainer, TrainingArguments

    from vlmexp.models.adapters.transformers import IGNORE_INDEX, TransformersAdapter, answer_token_count
    from vlmexp.trainers.sft import SFTTrainer

    model, processor, _ = SFTTrainer().prepare_model(run_context(cfg, work))
    tokenizer, adapter = processor.tokenizer, TransformersAdapter()
    examples = task.training_examples(splits.train)

    class Examples(torch.utils.data.Dataset):
        def __len__(self):
            return len(examples)

        def __getitem__(self, i):
            return examples[i].load()

    def collate(pairs):
        texts, answer_lengths = [], []
        for request, answer in pairs:
            prompt, text = adapter.supervised_text(processor, request, answer)
            texts.append(text)
            answer_lengths.append(answer_token_count(tokenizer, prompt, text))
        batch = processor(text=texts, images=[img for r, _ in pairs for img in r.images], padding=True,
                          padding_side="right", return_tensors="pt")
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        for row, (n_answer, length) in enumerate(zip(answer_lengths, batch["attention_mask"].sum(1).tolist())):
            labels[row, length - n_answer:length] = batch["input_ids"][row, length - n_answer:length]
        batch["labels"] = labels
        return batch

    stamps: list[float] = []

    class TimedTrainer(Trainer):
        def compute_loss(self, *args, **kwargs):
            stamps.append(time.perf_counter())
            return super().compute_loss(*args, **kwargs)

    train = cfg.train
    args = TrainingArguments(output_dir=str(work / "hf"), per_device_train_batch_size=train.batch_size,
                             max_steps=train.max_steps, learning_rate=train.lr, weight_decay=train.weight_decay,
                             warmup_steps=int(train.warmup_ratio * train.max_steps), lr_scheduler_type="cosine",
                             max_grad_norm=train.max_grad_norm, optim="adamw_torch", save_strategy="no",
                             report_to=[], logging_strategy="no", use_cpu=True, dataloader_num_workers=workers,
                             remove_unused_columns=False, seed=cfg.seed, disable_tqdm=True)
    TimedTrainer(model=model, args=args, train_dataset=Examples(), data_collator=collate).train()
    return rate(stamps, train.batch_size)


def rate(stamps: list[float], batch_size: int) -> float:
    """Samples per second from the start of the first step to the start of the last."""
    return (len(stamps) - 1) * batch_size / (stamps[-1] - stamps[0])


def main() -> None:
    parser = bench_arguments(__doc__, model=False)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None,
                        help="vlmexp's train.num_workers (default: null, one where a core is left for it)")
    parser.add_argument("--baseline-workers", type=int, default=0, help="the baseline's dataloader_num_workers")
    args = parse(parser)
    from hydra.utils import instantiate

    from vlmexp.trainers.batches import worker_count

    cache = args.cache_dir or tempfile.mkdtemp(prefix="vlmexp-bench-")
    cfg = compose(cache, args.steps, args.batch_size, args.workers)
    workers = worker_count(cfg.train.num_workers, "cpu")
    task = instantiate(cfg.task, _recursive_=False)
    splits = task.load_splits(run_context(cfg, Path(tempfile.mkdtemp(prefix="vlmexp-bench-"))))
    rates: dict[str, list[float]] = {"vlmexp": [], "transformers_trainer": []}
    for r in range(args.repeats):
        order = list(rates) if r % 2 == 0 else list(reversed(rates))
        for name in order:
            work = Path(tempfile.mkdtemp(prefix="vlmexp-bench-"))
            rates[name].append(vlmexp_rate(cfg, task, splits, work) if name == "vlmexp"
                               else baseline_rate(cfg, task, splits, work, args.baseline_workers))
    median = {k: statistics.median(v) for k, v in rates.items()}
    print(header())
    print(f"# {len(task.training_examples(splits.train))} training examples, {args.steps} steps of batch "
          f"{args.batch_size}, {args.repeats} rounds; DataLoader workers: vlmexp {workers}, "
          f"baseline {args.baseline_workers}")
    for name, values in rates.items():
        print(f"{name:>22}: {median[name]:7.2f} samples/s (rounds: {', '.join(f'{v:.2f}' for v in values)})")
    print(json.dumps({"vlmexp_samples_s": round(median["vlmexp"], 2),
                      "trainer_samples_s": round(median["transformers_trainer"], 2),
                      "vlmexp_vs_trainer": round(median["vlmexp"] / median["transformers_trainer"], 2),
                      "vlmexp_workers": workers, "trainer_workers": args.baseline_workers}))


if __name__ == "__main__":
    main()
