"""Per-client train/test splits built with flwr-datasets partitioners.

The client's test split follows the same rule as its train split:

* ``iid``: both splits are shuffled with ``seed`` and cut into equal contiguous shards.
* ``dirichlet``: label skew over ``answer``. ``DirichletPartitioner`` draws one
  proportion vector per class, in sorted class order, from an RNG seeded with
  ``seed`` (and never resamples with ``min_partition_size=0``), so with the same
  seed and the same answer set train and test get identical per-class proportions.
* ``question-type``: ``PathologicalPartitioner`` with one class per client in
  "first-deterministic" mode: client ``i`` gets ``sorted(types)[i % 3]``, i.e.
  0 -> color, 1 -> shape, 2 -> yes-no, 3 -> color, 4 -> shape, ...; clients that share a
  type get disjoint, near-equal slices of it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from datasets import Dataset

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

PARTITIONERS = ("iid", "dirichlet", "question-type")
# Column whose value set must match between train and test for the rule to align.
_CLASS_COLUMN = {"dirichlet": "answer", "question-type": "question_type"}


def client_split(train: Dataset, test: Dataset, *, partitioner: str, num_partitions: int,
                 partition_id: int, seed: int, dirichlet_alpha: float = 0.5,
                 max_train: int = 0, max_test: int = 0, partition_by: str | None = None) -> tuple[Dataset, Dataset]:
    """Return client ``partition_id``'s (train, test) splits, each optionally capped.

    A cap > 0 keeps a ``seed``-random subset of that many rows; 0 keeps everything.
    ``partition_by`` replaces the class column of dirichlet (answer) or question-type (question_type).
    """
    _validate(partitioner, num_partitions, partition_id, dirichlet_alpha, max_train, max_test)
    column = partition_by or _CLASS_COLUMN.get(partitioner)
    if partitioner in _CLASS_COLUMN:
        _check_same_classes(train, test, column, partitioner)
    return tuple(cap(partition(ds, partitioner=partitioner, num_partitions=num_partitions, partition_id=partition_id,
                               seed=seed, dirichlet_alpha=dirichlet_alpha, partition_by=partition_by, split=name),
                     limit, seed)
                 for name, ds, limit in (("train", train, max_train), ("test", test, max_test)))


def partition(ds: Dataset, *, partitioner: str, num_partitions: int, partition_id: int, seed: int,
              dirichlet_alpha: float, partition_by: str | None = None, split: str = "dataset") -> Dataset:
    """One partition of ``ds`` under the rule (see the module docstring); an empty one is an error."""
    _validate(partitioner, num_partitions, partition_id, dirichlet_alpha, 0, 0)
    column = partition_by or _CLASS_COLUMN.get(partitioner)
    if column is not None and column not in ds.column_names:
        raise ValueError(f"Partitioner {partitioner!r} partitions by column {column!r}, which the {split} split "
                         f"lacks; its columns: {ds.column_names}.")
    part = _partitioner(ds, partitioner, num_partitions, seed, dirichlet_alpha, column).load_partition(partition_id)
    if len(part) == 0:
        raise ValueError(
            f"Partition {partition_id} of {num_partitions} ({split} split, partitioner={partitioner!r}) "
            "is empty; use a larger dirichlet_alpha or fewer partitions.")
    return part


def _validate(partitioner: str, num_partitions: int, partition_id: int, alpha: float,
              max_train: int, max_test: int) -> None:
    if partitioner not in PARTITIONERS:
        raise ValueError(f"Unknown partitioner {partitioner!r}; allowed: {', '.join(PARTITIONERS)}")
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
    if not alpha > 0:
        raise ValueError(f"dirichlet_alpha must be > 0, got {alpha}")
    for name, cap in (("max_train", max_train), ("max_test", max_test)):
        if cap < 0:
            raise ValueError(f"{name} must be >= 0 (0 = no cap), got {cap}")


def _check_same_classes(train: Dataset, test: Dataset, column: str, partitioner: str) -> None:
    """Raise unless train and test hold the same set of ``column`` values."""
    train_classes, test_classes = set(train.unique(column)), set(test.unique(column))
    if train_classes != test_classes:
        raise ValueError(
            f"Partitioner {partitioner!r} needs the same {column} values in train and test; "
            f"only in train: {sorted(train_classes - test_classes)}, "
            f"only in test: {sorted(test_classes - train_classes)}")


@functools.lru_cache(maxsize=16)
def _partitioner(ds: Dataset, kind: str, num_partitions: int, seed: int, alpha: float,
                 column: str | None) -> Partitioner:
    """Partitioner over ``ds`` (cached per dataset object; partitions are computed once)."""
    # imported here: flwr_datasets imports matplotlib and seaborn (its plots), ~1 s that a ClientApp
    # reading its rows from the node's data cache, or its own dataset, does not need
    from flwr_datasets.partitioner import (  # noqa: PLC0415
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    part: Partitioner
    if kind == "iid":
        part = IidPartitioner(num_partitions=num_partitions)
        ds = ds.shuffle(seed=seed)
    elif kind == "dirichlet":
        part = DirichletPartitioner(num_partitions=num_partitions, partition_by=column, alpha=float(alpha),
                                    min_partition_size=0, self_balancing=False, seed=seed)
    else:
        part = PathologicalPartitioner(num_partitions=num_partitions, partition_by=column,
                                       num_classes_per_partition=1,
                                       class_assignment_mode="first-deterministic", seed=seed)
    part.dataset = ds
    return part


def cap(ds: Dataset, limit: int, seed: int) -> Dataset:
    """Seeded random subset of ``limit`` rows (all rows if ``limit`` is 0 or too large)."""
    if limit == 0 or limit >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(limit))


def validation_size(rows: int, fraction: float) -> int:
    """How many of a client's `rows` (>= 2) training rows `hold_out` keeps for validation."""
    return min(max(round(fraction * rows), 1), rows - 1)


def hold_out(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split a client's training rows into (train, validation), ``fraction`` of them (seeded,
    at least one row each) held out: the data hyperparameters are chosen on, never the test set."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    if len(train) < 2:
        raise ValueError(f"cannot hold out a validation set from {len(train)} training row(s)")
    split = train.train_test_split(test_size=validation_size(len(train), fraction), seed=seed, shuffle=True)
    return split["train"], split["test"]
