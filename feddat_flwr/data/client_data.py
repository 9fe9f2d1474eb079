"""A client's data for a run: where it comes from, its answer vocabulary, its two splits.

Two sources, one path: the embedded easy-VQA (`data.path` empty: partitioned with the project's
partitioners, each client in its view), or the client's own saved dataset (a simulation's
`data.path`/partition_<i>, or a deployed node's node-config `data-path`; see vqa_format.py).
Both are capped (`data.max-train`/`max-test`, seeded), optionally split for validation, given a
vocabulary of the `data.max-answers` most frequent training answers, and served by ClientSplits
that decode images per batch.

A deployed node with a `state-dir` keeps its easy-VQA rows (after partitioning, capping and the
task split) under <state-dir>/data-cache/, so a fresh ClientApp process (Flower's stock executor
starts one per message) reads them with `load_from_disk` instead of rebuilding them; the key is
the DataSpec plus a digest of the data code, so a change to either rebuilds them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from datasets import Dataset, load_from_disk
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
DATA_CACHE_DIR = "data-cache"  # under a node's state-dir


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
    cache_dir: str = ""  # a node's data cache (see the module docstring); "" for none

    @classmethod
    def from_config(cls, cfg: DictConfig, partition_id: int, num_partitions: int, *,
                    data_path: str = "", cache_dir: str = "") -> DataSpec:
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
                   d["test-fraction"], d["max-answers"], cache_dir)


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
    its visual domain's image transform; from the node's data cache when it has them."""
    view = client_view(spec.views, spec.partition_id)
    cached = _cache_path(spec)
    if cached is not None and cached.exists():
        train, test = load_from_disk(str(cached / "train")), load_from_disk(str(cached / "test"))
    else:
        train, test = _build_easyvqa_rows(spec, view.task)
        if cached is not None:
            _save_rows(cached, train, test)
    return train, test, domain_transform(view.domain, spec.seed)


def _build_easyvqa_rows(spec: DataSpec, task: str) -> tuple[Dataset, Dataset]:
    train, test = client_split(
        load_easyvqa("train"), load_easyvqa("test"),
        partitioner=spec.partitioner, num_partitions=spec.num_partitions,
        partition_id=spec.partition_id, seed=spec.seed, dirichlet_alpha=spec.dirichlet_alpha,
        max_train=spec.max_train, max_test=spec.max_test,
    )
    if spec.validation_fraction > 0:
        train, test = hold_out(train, spec.validation_fraction, spec.seed)
    return make_task_split(train, task, spec.seed), make_task_split(test, task, spec.seed)


@functools.cache
def _data_code_digest() -> str:
    """A digest of the code that builds a client's rows (this package's data modules)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _cache_path(spec: DataSpec) -> Path | None:
    if not spec.cache_dir:
        return None
    key = {k: v for k, v in asdict(spec).items() if k != "cache_dir"}
    name = hashlib.sha256(f"{sorted(key.items())}{_data_code_digest()}".encode()).hexdigest()[:20]
    return Path(spec.cache_dir) / f"easyvqa-{name}"


def _save_rows(path: Path, train: Dataset, test: Dataset) -> None:
    """Write both splits, then rename into place (a reader never sees half of them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        train.save_to_disk(str(tmp / "train"))
        test.save_to_disk(str(tmp / "test"))
        os.replace(tmp, path)
    except OSError:
        if not path.exists():  # not a concurrent writer that got there first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
