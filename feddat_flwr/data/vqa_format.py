"""A client's own VQA dataset on disk: reading and checking it before any training.

A client dataset is a directory written by `datasets` `save_to_disk`: a DatasetDict with splits
`train` and `test`, or a single Dataset of which `test_fraction` (seeded) is held out as test.
Columns: `image` (a datasets.Image feature) or `image_path` (relative to the dataset directory or
absolute); `question` (str); `answer` (str) or `answers` (list of str: several annotators,
VQA-style). An optional `question_type` may be used by partitioners; other columns are ignored.
A simulation's `data.path` holds one such directory per client, `partition_0`, `partition_1`, ...
"""

from __future__ import annotations

import difflib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict, Image, Sequence, Value, load_from_disk
from datasets.features import List
from PIL import Image as PILImage

REQUIRED = {"image": ("image", "image_path"), "question": ("question",), "answer": ("answer", "answers")}
SPLITS = ("train", "test")
PARTITION_PREFIX = "partition_"


class DataError(ValueError):
    """A client dataset that cannot be used, with what is wrong and where."""


@dataclass
class VqaSplit:
    """One split: its rows (for the images), questions and each example's answers."""

    rows: Dataset
    questions: list[str]
    answers: list[list[str]]


@dataclass
class VqaData:
    """A checked client dataset: its train and test splits (memory-mapped from disk)."""

    path: Path
    train: Dataset
    test: Dataset
    multi_answer: bool  # an `answers` column: several annotators per question


def partition_dirs(root: Path) -> list[Path]:
    """`partition_0`, `partition_1`, ... under a simulation's data.path, in order; an error unless
    they are numbered 0..n-1 without gaps."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.path {str(root)!r} is not a directory.")
    found = {int(m.group(1)): p for p in root.iterdir()
             if p.is_dir() and (m := re.fullmatch(rf"{PARTITION_PREFIX}(\d+)", p.name))}
    if not found:
        raise DataError(f"data.path {str(root)!r} has no {PARTITION_PREFIX}<i> sub-directories "
                        f"(one saved dataset per client: {PARTITION_PREFIX}0, {PARTITION_PREFIX}1, ...).")
    missing = sorted(set(range(max(found) + 1)) - set(found))
    if missing:
        raise DataError(f"data.path {str(root)!r} lacks {PARTITION_PREFIX}{missing[0]} "
                        f"(partitions must be numbered 0..{max(found)} without gaps).")
    return [found[i] for i in sorted(found)]


def check_partition_count(root: Path, num_clients: int) -> list[Path]:
    """The client dataset directories under `root`; an error unless there is one per SuperNode."""
    dirs = partition_dirs(root)
    found = len(dirs)
    if found != num_clients:
        raise DataError(f"data.path {str(root)!r} holds {found} client datasets ({PARTITION_PREFIX}0.."
                        f"{PARTITION_PREFIX}{found - 1}) but the federation has {num_clients} SuperNodes; "
                        "they must be equal.")
    return dirs


def load_vqa(path: Path, *, test_fraction: float, seed: int) -> VqaData:
    """Read and check one client dataset (see the module docstring); every problem is an error
    naming the path, the split, the column or the row, and what is allowed."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"Client dataset {str(path)!r} does not exist.")
    _check_no_empty_split(path)
    try:
        loaded = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"{str(path)!r} is not a dataset saved with datasets' save_to_disk "
                        f"(a Dataset or a DatasetDict with splits train and test): {exc}") from None
    if isinstance(loaded, DatasetDict):
        missing = [s for s in SPLITS if s not in loaded]
        if missing:
            raise DataError(f"{str(path)!r} has splits {sorted(loaded)}; a DatasetDict needs 'train' and 'test' "
                            "(or save a single Dataset and set data.test-fraction).")
        train, test = loaded["train"], loaded["test"]
    else:
        _check_columns(loaded, path, "dataset")
        if not 0 < test_fraction < 1 or len(loaded) < 2:
            raise DataError(f"{str(path)!r} is a single Dataset of {len(loaded)} rows: set data.test-fraction in "
                            f"(0, 1) to hold out its test split (got {test_fraction}), or save train and test.")
        split = loaded.train_test_split(test_size=test_fraction, seed=seed, shuffle=True)
        train, test = split["train"], split["test"]
    splits = {}
    for name, ds in (("train", train), ("test", test)):
        _check_columns(ds, path, name)
        if len(ds) == 0:
            raise DataError(f"{str(path)!r}: the {name} split is empty.")
        read_split(ds, path, name)  # every row's question and answers
        splits[name] = ds
        _check_images(ds, path, name)
    multi = "answers" in train.column_names
    if multi != ("answers" in test.column_names):
        raise DataError(f"{str(path)!r}: train and test must both have 'answer' or both 'answers'.")
    return VqaData(path, splits["train"], splits["test"], multi)


def _check_no_empty_split(path: Path) -> None:
    """A split saved with no rows has no data files, which `load_from_disk` cannot read back."""
    index = path / "dataset_dict.json"
    if not index.is_file():
        return
    for split in json.loads(index.read_text()).get("splits", []):
        state = path / split / "state.json"
        if state.is_file() and not json.loads(state.read_text()).get("_data_files"):
            raise DataError(f"{str(path)!r}: the {split} split is empty.")


def _check_columns(ds: Dataset, path: Path, split: str) -> None:
    columns = ds.column_names
    for role, names in REQUIRED.items():
        present = [n for n in names if n in columns]
        if not present:
            close = difflib.get_close_matches(names[0], columns, n=1) or difflib.get_close_matches(
                names[-1], columns, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise DataError(f"{str(path)!r} ({split}): no column {' or '.join(map(repr, names))}; "
                            f"found {columns}.{hint}")
        if len(present) > 1:
            raise DataError(f"{str(path)!r} ({split}): give one of the columns {present}, not both.")
    features = ds.features
    expected = {"question": "a string", "answer": "a string", "answers": "a list of strings",
                "image_path": "a string", "image": "a datasets.Image feature"}
    for name in set(columns) & set(expected):
        feature = features[name]
        ok = {"question": _is_string(feature), "answer": _is_string(feature), "image_path": _is_string(feature),
              "answers": isinstance(feature, (List, Sequence)) and _is_string(feature.feature),
              "image": isinstance(feature, Image)}[name]
        if not ok:
            raise DataError(f"{str(path)!r} ({split}): column {name!r} must be {expected[name]}, got {feature}.")


def _is_string(feature) -> bool:
    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def read_split(ds: Dataset, path: Path | str, split: str) -> VqaSplit:
    """A split's questions and answers (one list per example), each checked."""
    questions = ds["question"][:]
    for i, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"{str(path)!r} ({split}), row {i}: the question must be a non-empty string, got {q!r}.")
    if "answers" in ds.column_names:
        answers = [list(a or []) for a in ds["answers"][:]]
    else:
        answers = [[a] if a is not None else [] for a in ds["answer"][:]]
    for i, a in enumerate(answers):
        if not a or not all(isinstance(x, str) and x.strip() for x in a):
            raise DataError(f"{str(path)!r} ({split}), row {i}: needs at least one non-empty answer, got {a!r}.")
    return VqaSplit(ds.remove_columns([c for c in ds.column_names if c not in ("image", "image_path")]),
                    questions, answers)


def _check_images(ds: Dataset, path: Path, split: str) -> None:
    """Every image opens and decodes (headers and data), before any training."""
    if "image" in ds.column_names:
        raw = ds.cast_column("image", Image(decode=False))
        for i, value in enumerate(raw["image"][:]):
            source = value.get("path") or f"row {i}"
            try:
                if value.get("bytes") is not None:
                    PILImage.open(io.BytesIO(value["bytes"])).load()
                else:
                    PILImage.open(value["path"]).load()
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                raise DataError(f"{str(path)!r} ({split}), row {i}: cannot decode the image {source!r}: {exc}") from None
        return
    for i, name in enumerate(ds["image_path"][:]):
        file = Path(name) if Path(name).is_absolute() else path / name
        try:
            with PILImage.open(file) as image:
                image.load()
        except (OSError, ValueError) as exc:
            raise DataError(f"{str(path)!r} ({split}), row {i}: cannot decode the image {str(file)!r}: {exc}") from None
