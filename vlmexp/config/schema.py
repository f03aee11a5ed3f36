"""Structured config: the typed skeleton every composed run is merged into.

Hydra merges the YAML groups into these dataclasses, so a misspelt key (``data.limt=3``) or a value
of the wrong type (``train.lr=fast``) fails at composition time. Groups whose keys depend on the
plugin (``task``, ``engine``, ``logger``) stay open here; their keys are checked against the plugin's
constructor by :mod:`vlmexp.config.validate` before anything heavy is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Mode(str, Enum):
    train = "train"
    eval = "eval"
    train_eval = "train_eval"


@dataclass
class ModelConfig:
    name: str = MISSING
    # The model family's adapter (``_target_``: a vlmexp.models.adapters.ModelAdapter); conf/model/_base.yaml
    # names the default one for AutoModelForImageTextToText models.
    adapter: Any = None
    hf_id: str | None = None
    # A callable (``_target_``) that returns a local checkpoint folder; used instead of hf_id
    # when set (the tiny model builds itself offline this way).
    local_builder: Any = None
    ollama_tag: str | None = None
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    min_pixels: int = 256 * 28 * 28
    max_pixels: int = 1280 * 28 * 28
    trust_remote_code: bool = False
    revision: str | None = None
    # Name of a smaller model config to switch to on CUDA out-of-memory at batch size 1.
    fallback: str | None = None
    # How the model writes a box (``_target_``: vlmexp.annotation.boxes), for task=annotate's grounding answers.
    box_format: Any = None
    notes: str = ""


@dataclass
class HardwareConfig:
    name: str = "auto"
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    attn_implementation: str = "auto"  # auto | flash_attention_2 | sdpa | eager
    quantization: int | None = None  # 4 or 8 (bitsandbytes, CUDA only)
    multi_gpu: bool = False


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"
    quant_bits: int | None = None


@dataclass
class TrainConfig:
    """What every trainer on the one training loop reads (``train.*``)."""

    epochs: int = 3
    lr: float = 2e-5
    batch_size: int = 2
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    patience: int = 2
    eval_every_steps: int | None = None
    max_steps: int | None = None
    freeze_vision: bool = True
    freeze_projector: bool = False
    freeze_llm: bool = False
    gradient_checkpointing: bool = False
    # DataLoader worker processes that read the training examples and build their batches while the
    # model trains (0: in the training process; null: one where a core is left for it, else none).
    # How it runs, not what it learns: not in the fingerprint.
    num_workers: int | None = None
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class SFTTrainConfig(TrainConfig):
    """``trainer=sft``: supervised fine-tuning, one stage."""


@dataclass
class ClassifierTrainConfig(TrainConfig):
    """``trainer=classifier``: a classifier head, in stages; each item overrides keys of this block."""

    stages: list[Any] = field(default_factory=list)


@dataclass
class DataConfig:
    root: str | None = None
    format: str | None = None
    # data.format -> a reader class (``_target_``); each task's YAML lists the formats it reads.
    formats: Any = None
    limit: int | None = None
    train_root: str | None = None
    val_root: str | None = None
    frame_stride: int = 1
    # data.root (and train_root, val_root) hold one folder per source (camera, dataset), each in data.format:
    # metrics are also reported per source (smoke).
    by_source: bool = False
    labels_file: str | None = None
    train_file: str | None = None
    val_file: str | None = None
    test_file: str | None = None
    image_dir: str | None = None
    # Parameters of the generated dataset used when no dataset is given (quickstart, tests).
    synthetic: Any = None


@dataclass
class PathsConfig:
    cache_dir: str = "~/.cache/vlmexp"
    # Crash-safe prediction files, keyed by config fingerprint (not by Hydra's timestamped dir).
    predictions_dir: str = "${paths.cache_dir}/predictions"
    # Free space (GiB) in the cache dir a training run needs before it starts (checkpoints).
    min_free_gb: float = 1.0


@dataclass
class EvalConfig:
    """How results are reported (not what is predicted: left out of the config fingerprint)."""

    bootstrap: int = 1000  # resamples for the confidence intervals of headline metrics; 0 turns them off
    confidence: float = 0.95


@dataclass
class SweepConfig:
    """How a sweep (``-m``) ranks its jobs: the parent run's best job, Optuna's objective."""

    metric: str | None = None  # null: the first metric of the task's results table
    direction: str = "maximize"  # maximize | minimize


@dataclass
class RunConfig:
    mode: Mode = MISSING
    seed: int = 42
    resume: bool = True
    task: Any = MISSING
    model: ModelConfig = MISSING
    engine: Any = MISSING
    hardware: HardwareConfig = MISSING
    logger: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    # Typed by the trainer group option (conf/trainer/: sft, classifier), which each task selects.
    train: Any = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # task=annotate's plugins (conf/detector/, conf/captioner/); the annotate task selects them.
    detector: Any = None
    captioner: Any = None
    sweep: SweepConfig = field(default_factory=SweepConfig)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="vlmexp_schema", node=RunConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="hardware", name="hardware_schema", node=HardwareConfig)
    cs.store(group="trainer", name="sft_schema", node=SFTTrainConfig, package="train")
    cs.store(group="trainer", name="classifier_schema", node=ClassifierTrainConfig, package="train")
