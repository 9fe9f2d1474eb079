"""The learning rate of each round (the server sends it; constant within a round)."""

from __future__ import annotations

import math
from collections.abc import Callable

from omegaconf import DictConfig


def _cosine(base_lr: float, min_ratio: float, server_round: int, num_rounds: int) -> float:
    """base_lr in round 1 decaying to base_lr * min_ratio in the last round."""
    if num_rounds == 1:
        return base_lr
    progress = (server_round - 1) / (num_rounds - 1)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _constant(base_lr: float, min_ratio: float, server_round: int, num_rounds: int) -> float:
    """base_lr in every round."""
    return base_lr


LR_SCHEDULES: dict[str, Callable[[float, float, int, int], float]] = {"cosine": _cosine, "constant": _constant}


def round_lr(cfg: DictConfig, server_round: int) -> float:
    """The learning rate of `server_round` under the configuration's train.lr-schedule."""
    train = cfg.train
    return LR_SCHEDULES[train["lr-schedule"]](train["lr"], train["min-lr-ratio"], server_round, cfg["num-rounds"])
