"""The client's private answer classifier over the backbone's pooled output."""

from __future__ import annotations

import torch
from torch import nn


class AnswerHead(nn.Sequential):
    """2-layer MLP (as ViLT's VQA head): Linear(h, 2h) - LayerNorm - GELU - Linear(2h, n)."""

    def __init__(self, hidden_size: int, num_labels: int):
        if num_labels < 1:
            raise ValueError(f"A head needs at least one label, got num_labels={num_labels}.")
        super().__init__(
            nn.Linear(hidden_size, 2 * hidden_size),
            nn.LayerNorm(2 * hidden_size),
            nn.GELU(),
            nn.Linear(2 * hidden_size, num_labels),
        )


def new_head(hidden_size: int, num_labels: int, seed: int) -> AnswerHead:
    """A freshly initialised head, deterministic given the seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AnswerHead(hidden_size, num_labels)
