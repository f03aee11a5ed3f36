"""Checks that run on the composed config before anything heavy is imported or built.

Each failure is a :class:`ConfigError` whose message names the key and the bad value or path.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from vlmexp.errors import ConfigError
from vlmexp.provenance import COST_KEYS

_RESERVED = {"_target_", "_recursive_", "_convert_", "_partial_"}


def check_target_keys(node: DictConfig, key: str, *, exclude: tuple[str, ...] = ()) -> None:
    """Every key of a ``_target_`` node must be a parameter of the class it names (catches typos)."""
    target = node.get("_target_")
    if not target:
        raise ConfigError(f"{key}._target_ is missing")
    try:
        cls = get_class(target)
    except Exception as exc:
        raise ConfigError(f"{key}._target_={target}: cannot import it ({exc})") from None
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = set(params) - {"self"}
    for name in node:
        if name not in _RESERVED and name not in accepted and name not in exclude:
            options = ", ".join(sorted(accepted - set(exclude) - {"run", "model", "processor"}))
            raise ConfigError(f"{key}.{name}: unknown key for {cls.__name__} (known keys: {options})")


_TOP_LEVEL = {"mode", "seed", "resume", "task", "model", "engine", "hardware", "logger", "data", "train", "paths",
              "eval", "detector", "captioner", "sweep"}


def validate(cfg: DictConfig) -> None:
    unknown = sorted(set(cfg) - _TOP_LEVEL)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown top-level key (known: {', '.join(sorted(_TOP_LEVEL))})")
    try:
        mode = str(cfg.mode.value if hasattr(cfg.mode, "value") else cfg.mode)
    except Exception as exc:
        raise ConfigError(f"mode: {exc}".splitlines()[0]) from None
    data = cfg.data
    if data.limit is not None and data.limit < 0:
        raise ConfigError(f"data.limit={data.limit}: must be a positive number of samples (or null for all)")
    if data.frame_stride < 1:
        raise ConfigError(f"data.frame_stride={data.frame_stride}: must be >= 1")
    check_target_keys(cfg.task, "task")
    for key in get_class(cfg.task._target_).path_keys:  # each task declares the data keys it reads
        value = data.get(key)
        if value is not None and not Path(value).expanduser().exists():
            raise ConfigError(f"data.{key}={value}: no such file or folder")
    train = cfg.train
    for key in ("epochs", "batch_size", "grad_accum"):
        if train[key] < 1:
            raise ConfigError(f"train.{key}={train[key]}: must be >= 1")
    if train.lr <= 0:
        raise ConfigError(f"train.lr={train.lr}: must be > 0")
    if train.patience < 1:
        raise ConfigError(f"train.patience={train.patience}: must be >= 1")
    if train.num_workers is not None and train.num_workers < 0:
        raise ConfigError(f"train.num_workers={train.num_workers}: must be >= 0 (0 reads the examples in the "
                          "training process) or null (one worker where a core is left for it)")
    ev = cfg.get("eval")
    if ev is not None and ev.bootstrap < 0:
        raise ConfigError(f"eval.bootstrap={ev.bootstrap}: must be >= 0 resamples (0 turns intervals off)")
    if ev is not None and not 0 < ev.confidence < 1:
        raise ConfigError(f"eval.confidence={ev.confidence}: must be in (0, 1)")
    check_target_keys(cfg.engine, "engine", exclude=COST_KEYS)
    for key in COST_KEYS:
        price = cfg.engine.get(key)
        if price is not None and (not isinstance(price, int | float) or price < 0):
            raise ConfigError(f"engine.{key}={price}: must be a price >= 0 (per 1000 tokens, or per image)")
    check_target_keys(cfg.logger, "logger")
    _check_trainer_settings(cfg, mode)
    task_modes = get_class(cfg.task._target_).modes
    if mode not in task_modes:
        raise ConfigError(f"mode={mode}: task={cfg.task.name} supports {', '.join(task_modes)}")
    if "train" in mode and not get_class(cfg.engine._target_).trains_in_process:
        raise ConfigError(f"mode={mode}: training needs engine=hf (engine._target_={cfg.engine._target_} "
                          "only serves a model); use mode=eval")
    OmegaConf.to_container(cfg, resolve=True)  # any broken interpolation fails here, by key


def _check_trainer_settings(cfg: DictConfig, mode: str) -> None:
    """The ``train`` block must be the one the task's trainer reads (the ``trainer=`` group option)."""
    node = cfg.task.get("trainer")
    if "train" not in mode or not node or not node.get("_target_"):
        return
    check_target_keys(node, "task.trainer")
    cls = get_class(node._target_)
    wanted, actual = getattr(cls, "settings", None), OmegaConf.get_type(cfg.train)
    if wanted is not None and actual is not wanted:
        raise ConfigError(f"trainer: task.trainer is {cls.__name__}, which reads trainer={cls.settings_option} "
                          f"settings, not {getattr(actual, '__name__', actual)}; use trainer={cls.settings_option}")
