"""Checks of a client's shared-adapter update before the server aggregates it.

A reply is compared with the global adapter the server sent in that round: exactly the same
tensor names, each with the same shape and dtype, every value finite. Over the replies that pass,
an update (reply - sent) whose L2 norm is more than `max_ratio` times the round's median update
norm is an outlier (`strategy.max-update-norm`). Flower-free: the server's round book
(feddat_flwr.flower.round_book) applies these checks; unit tests call them directly.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping

import numpy as np

Arrays = Mapping[str, np.ndarray]

# strategy.aggregation: how the valid shared adapters of a round are combined (Flower's FedAvg,
# FedMedian, FedTrimmedAvg and Krum; feddat_flwr.flower.strategy maps each name to its class).
AGGREGATIONS = ("fedavg", "median", "trimmed-mean", "krum")


def update_problem(sent: Arrays, reply: Arrays) -> str | None:
    """What is wrong with a reply's arrays against the arrays sent, or None if nothing."""
    if set(reply) != set(sent):
        extra, missing = sorted(set(reply) - set(sent)), sorted(set(sent) - set(reply))
        return (f"reply arrays are not exactly the shared adapter (extra keys {extra[:3]}, "
                f"missing keys {missing[:3]})")
    for key, expected in sent.items():
        got = reply[key]
        if got.shape != expected.shape or got.dtype != expected.dtype:
            return (f"array {key!r} is {got.dtype}{list(got.shape)}, "
                    f"the server sent {expected.dtype}{list(expected.shape)}")
        if not np.isfinite(got).all():
            bad = int(got.size - np.isfinite(got).sum())
            return f"array {key!r} has {bad} non-finite values (NaN or inf)"
    return None


def update_norm(sent: Arrays, reply: Arrays) -> float:
    """The L2 norm of the update reply - sent over all arrays (float64)."""
    return math.sqrt(sum(float(np.sum((reply[k].astype(np.float64) - v.astype(np.float64)) ** 2))
                         for k, v in sent.items()))


def norm_outliers(norms: list[float], max_ratio: float) -> list[str | None]:
    """For each update norm, why it is an outlier (over `max_ratio` x the median), or None.
    `max_ratio` 0 turns the rule off; so does a zero median (nothing moved). With two replies
    the median is their mean, so only three or more can show which one is out of line."""
    if max_ratio <= 0 or not norms:
        return [None] * len(norms)
    median = statistics.median(norms)
    if median <= 0:
        return [None] * len(norms)
    return [f"update norm {n:.4g} is over {max_ratio:g} x the round's median {median:.4g} "
            f"(strategy.max-update-norm)" if n > max_ratio * median else None for n in norms]
