"""Splitting annotated images into train / val / test (``task.split``), by image and seeded."""

from __future__ import annotations

import random
from collections.abc import Sequence

from vlmexp.errors import ConfigError

SPLITS = ("train", "val", "test")


def check_ratios(split: dict) -> tuple[float, float]:
    """``(train, val)`` from ``task.split``; the test split takes the rest. Bad values are one line."""
    unknown = sorted(set(split) - {"train", "val"})
    if unknown:
        raise ConfigError(f"task.split.{unknown[0]}: unknown key (give train and val; the rest is the test split)")
    ratios = []
    for key in ("train", "val"):
        value = split.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ConfigError(f"task.split.{key}={value}: must be a fraction between 0 and 1")
        ratios.append(float(value))
    if sum(ratios) > 1 + 1e-9:
        raise ConfigError(f"task.split: train {ratios[0]:g} + val {ratios[1]:g} = {sum(ratios):g} is over 1 "
                          "(the test split takes what is left)")
    return ratios[0], ratios[1]


def split_images(images: Sequence[str], train: float, val: float, seed: int) -> dict[str, str]:
    """Image -> split. The images are sorted, then shuffled by ``seed``: round(train * n) go to train,
    round(val * n) to val (at most what is left), the rest to test."""
    order = sorted(images)
    random.Random(seed).shuffle(order)
    n_train = round(train * len(order))
    n_val = min(round(val * len(order)), len(order) - n_train)
    return {image: ("train" if i < n_train else "val" if i < n_train + n_val else "test")
            for i, image in enumerate(order)}
