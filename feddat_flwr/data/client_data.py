"""A client's data for a run: where it comes from, its answer vocabulary, its two splits.

Two sources, one path: the embedded easy-VQA (`data.path` empty: partitioned with the project's
partitioners, each client in its view), or the client's own saved dataset (a simulation's
`data.path`/partition_<i>, or a deployed node's node-config `data-path`; see vqa_format.py).
Both are capped (`data.max-train`/`max-test`, seeded), optionally split for validation, given a
vocabulary of the `data.max-answers` most frequent training answers, and served by ClientSplits
that decode images per batch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from omegaconf import DictConfig

from feddat_flwr.data.answers import Vocabulary
from feddat_flwr.data.domains import domain_transform
from feddat_flwr.data.easyvqa import load_easyvqa
from feddat_flwr.data.loader import ClientSplit, Collator, ImageTransform
from feddat_flwr.data.partition import cap, client_split, hold_out
from feddat_flwr.data.tasks import make_task_split
from feddat_flwr.data.views import client_view
from feddat_flwr.data.vqa_format import DataError, check_partition_count, load_vqa, read_split

DATA_PATH_KEY = "data-path"  # node-config key: this SuperNode's own dataset directory


@dataclass(frozen=True)
class DataSpec:
    """Everything that determines a client's data; hashable, so it keys the per-process cache."""

    source: str  # "" for the embedded easy-VQA, else the client's dataset directory
    partition_id: int
    num_partitions: int
    seed: int
    partitioner: str
    views: str
    dirichlet_alpha: float
    max_train: int
    max_test: int
    validation_fraction: float
    test_fraction: float
    max_answers: int

    @classmethod
    def from_config(cls, cfg: DictConfig, partition_id: int, num_partitions: int, *,
                    data_path: str = "") -> DataSpec:
        """A node's own `data_path` wins; else the run's `data.path` (partition_<partition_id>);
        else the embedded easy-VQA partition."""
        d = cfg.data
        if not data_path:
            if not 0 <= partition_id < num_partitions:
                raise ValueError(f"partition-id {partition_id} is outside [0, {num_partitions}) "
                                 f"(num-partitions {num_partitions}).")
            if d["path"]:
                data_path = str(check_partition_count(Path(d["path"]), num_partitions)[partition_id])
        return cls(str(data_path), partition_id, num_partitions, cfg["seed"], d["partitioner"], d["client-views"],
                   d["dirichlet-alpha"], d["max-train"], d["max-test"], d["validation-fraction"],
                   d["test-fraction"], d["max-answers"])


@dataclass
class ClientData:
    partition_id: int
    vocabulary: Vocabulary
    train: ClientSplit  # examples with at least one answer in the vocabulary
    test: ClientSplit
    collator: Collator
    majority: float  # test score of always giving the most frequent training answer
    dropped: int  # training examples none of whose answers is in the vocabulary (left out)

    @property
    def labels(self) -> list[str]:
        return list(self.vocabulary.labels)


def easyvqa_rows(spec: DataSpec) -> tuple[Dataset, Dataset, ImageTransform | None]:
    """A client's easy-VQA train and test rows (partitioned, capped, held out, in its task) and
    its visual domain's image transform."""
    view = client_view(spec.views, spec.partition_id)
    train, test = client_split(
        load_easyvqa("train"), load_easyvqa("test"),
        partitioner=spec.partitioner, num_partitions=spec.num_partitions,
        partition_id=spec.partition_id, seed=spec.seed, dirichlet_alpha=spec.dirichlet_alpha,
        max_train=spec.max_train, max_test=spec.max_test,
    )
    if spec.validation_fraction > 0:
        train, test = hold_out(train, spec.validation_fraction, spec.seed)
    train, test = make_task_split(train, view.task, spec.seed), make_task_split(test, view.task, spec.seed)
    return train, test, domain_transform(view.domain, spec.seed)


def disk_rows(spec: DataSpec) -> tuple[Dataset, Dataset, bool]:
    """A client's own dataset (checked), capped and held out like easy-VQA's; whether multi-answer."""
    data = load_vqa(Path(spec.source), test_fraction=spec.test_fraction, seed=spec.seed)
    train, test = cap(data.train, spec.max_train, spec.seed), cap(data.test, spec.max_test, spec.seed)
    if spec.validation_fraction > 0:
        train, test = hold_out(train, spec.validation_fraction, spec.seed)
    return train, test, data.multi_answer


@functools.lru_cache(maxsize=16)
def load_client_data(spec: DataSpec, processor) -> ClientData:
    """The client's data, once per process. Only per-example metadata is kept (images are decoded
    per batch), so caching several clients costs little memory."""
    if spec.source:
        train, test, multi = disk_rows(spec)
        root, transform = Path(spec.source), None
    else:
        (train, test, transform), multi, root = easyvqa_rows(spec), False, None
    source = spec.source or "easy-vqa"
    train_split, test_split = read_split(train, source, "train"), read_split(test, source, "test")
    vocabulary = Vocabulary.build(train_split.answers, spec.max_answers, multi)
    targets = [vocabulary.target(a) for a in train_split.answers]
    kept = [i for i, t in enumerate(targets) if t is not None]
    if not kept:
        raise DataError(f"Client {spec.partition_id} ({source}): none of its {len(targets)} training examples "
                        f"has an answer in its vocabulary of {len(vocabulary)} answers.")

    def split(rows: Dataset, questions, split_targets) -> ClientSplit:
        return ClientSplit(rows, questions, split_targets, processor.image_processor, root=root, transform=transform)

    rows = train.select(kept) if len(kept) < len(targets) else train
    return ClientData(
        partition_id=spec.partition_id,
        vocabulary=vocabulary,
        train=split(rows, [train_split.questions[i] for i in kept], [targets[i] for i in kept]),
        test=split(test, test_split.questions, [vocabulary.target(a) for a in test_split.answers]),
        collator=Collator(processor.tokenizer, len(vocabulary), multi),
        majority=vocabulary.majority_score(train_split.answers, test_split.answers),
        dropped=len(targets) - len(kept),
    )
