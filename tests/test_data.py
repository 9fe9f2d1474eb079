"""Tests for feddat_flwr.data: easy-VQA loading, client partitions, the per-batch loader."""

from __future__ import annotations

import copy
import os
from collections import Counter

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image, ImageOps

from datasets import Image as DatasetImage

from feddat_flwr.data.answers import Vocabulary
from feddat_flwr.data.easyvqa import QUESTION_TYPES, load_easyvqa
from feddat_flwr.data.loader import ClientSplit, Collator, make_loader
from feddat_flwr.data.partition import client_split, hold_out

SHAPES = {"circle", "rectangle", "triangle"}


@pytest.fixture(scope="module")
def train() -> Dataset:
    return load_easyvqa("train")


@pytest.fixture(scope="module")
def test() -> Dataset:
    return load_easyvqa("test")


def keys(ds: Dataset) -> list[tuple[int, str]]:
    """(image_id, question) identifies an easy-VQA row uniquely within a split."""
    return list(zip(ds["image_id"][:], ds["question"][:]))


def answer_distribution(ds: Dataset, labels: list[str]) -> np.ndarray:
    counts = Counter(ds["answer"][:])
    freq = np.array([counts[label] for label in labels], dtype=float)
    return freq / freq.sum()


def split(train: Dataset, test: Dataset, partitioner: str, partition_id: int, **kwargs):
    kwargs = {"num_partitions": 5, "seed": 0, **kwargs}
    return client_split(train, test, partitioner=partitioner, partition_id=partition_id, **kwargs)


# --- load_easyvqa -------------------------------------------------------------------------

def test_load_easyvqa_columns_and_question_types(train: Dataset, test: Dataset) -> None:
    assert len(train) == 38575 and len(test) == 9673
    for ds in (train, test):
        assert ds.column_names == ["image_path", "image_id", "question", "answer", "question_type"]
        assert set(ds["question_type"][:]) == set(QUESTION_TYPES)
        row = ds[0]
        assert os.path.isabs(row["image_path"]) and os.path.isfile(row["image_path"])
        assert os.path.basename(row["image_path"]) == f"{row['image_id']}.png"
    for answer, qtype in zip(train["answer"][:], train["question_type"][:]):
        expected = "shape" if answer in SHAPES else "yes-no" if answer in {"yes", "no"} else "color"
        assert qtype == expected
    assert train[0]["question"] == "what is the blue shape?" and train[0]["answer"] == "rectangle"
    assert load_easyvqa("train") is train


def test_load_easyvqa_rejects_unknown_split() -> None:
    with pytest.raises(ValueError, match=r"'validation'.*train, test"):
        load_easyvqa("validation")


# --- client_split -------------------------------------------------------------------------

def test_question_type_partition(train: Dataset, test: Dataset) -> None:
    parts = [split(train, test, "question-type", pid) for pid in range(5)]
    types = [(set(tr["question_type"][:]), set(te["question_type"][:])) for tr, te in parts]
    expected = ["color", "shape", "yes-no", "color", "shape"]
    assert types == [({t}, {t}) for t in expected]
    for a, b in ((0, 3), (1, 4)):
        for s in (0, 1):
            ka, kb = set(keys(parts[a][s])), set(keys(parts[b][s]))
            assert not ka & kb
            full = train if s == 0 else test
            qtype = expected[a]
            assert len(ka | kb) == full["question_type"][:].count(qtype)


def test_dirichlet_is_reproducible_and_seeded(train: Dataset, test: Dataset) -> None:
    first = split(train, test, "dirichlet", 2, seed=3)
    # Fresh dataset objects, so no cached partitioner is involved.
    again = split(train.select(range(len(train))), test.select(range(len(test))), "dirichlet", 2, seed=3)
    assert keys(first[0]) == keys(again[0]) and keys(first[1]) == keys(again[1])
    other = split(train, test, "dirichlet", 2, seed=4)
    assert set(keys(first[0])) != set(keys(other[0]))


def test_dirichlet_train_and_test_share_class_proportions(train: Dataset, test: Dataset) -> None:
    labels = sorted(train.unique("answer"))
    sizes = []
    for pid in range(5):
        tr, te = split(train, test, "dirichlet", pid, seed=1)
        _, te_other_seed = split(train, test, "dirichlet", pid, seed=2)
        p = answer_distribution(tr, labels)
        tvd = 0.5 * np.abs(p - answer_distribution(te, labels)).sum()
        tvd_other = 0.5 * np.abs(p - answer_distribution(te_other_seed, labels)).sum()
        assert tvd < 0.05 < tvd_other
        sizes.append((len(tr), len(te)))
    train_share = np.array([s[0] for s in sizes]) / len(train)
    test_share = np.array([s[1] for s in sizes]) / len(test)
    assert np.abs(train_share - test_share).max() < 0.02
    assert sum(s[0] for s in sizes) == len(train) and sum(s[1] for s in sizes) == len(test)


def test_caps_take_seeded_subset(train: Dataset, test: Dataset) -> None:
    full_tr, full_te = split(train, test, "dirichlet", 0)
    tr, te = split(train, test, "dirichlet", 0, max_train=100, max_test=30)
    assert (len(tr), len(te)) == (100, 30)
    assert set(keys(tr)) <= set(keys(full_tr)) and set(keys(te)) <= set(keys(full_te))
    assert keys(tr) == keys(split(train, test, "dirichlet", 0, max_train=100, max_test=30)[0])
    big_tr, big_te = split(train, test, "dirichlet", 0, max_train=10**7, max_test=10**7)
    assert (len(big_tr), len(big_te)) == (len(full_tr), len(full_te))


def test_hold_out_is_a_seeded_disjoint_split_of_the_training_rows(train: Dataset, test: Dataset) -> None:
    tr, _ = split(train, test, "question-type", 1, max_train=100)
    rest, validation = hold_out(tr, 0.2, seed=3)
    assert (len(rest), len(validation)) == (80, 20)
    assert sorted(keys(rest) + keys(validation)) == sorted(keys(tr))
    assert keys(validation) == keys(hold_out(tr, 0.2, seed=3)[1])
    assert keys(validation) != keys(hold_out(tr, 0.2, seed=4)[1])
    assert len(hold_out(tr.select(range(3)), 0.01, seed=0)[1]) == 1  # never empty
    for fraction in (0.0, 1.0):
        with pytest.raises(ValueError, match=f"validation fraction must be in \\(0, 1\\), got {fraction}"):
            hold_out(tr, fraction, seed=0)


def test_iid_sizes_and_coverage(train: Dataset, test: Dataset) -> None:
    parts = [split(train, test, "iid", pid, seed=5) for pid in range(5)]
    for s, full in ((0, train), (1, test)):
        sizes = [len(p[s]) for p in parts]
        assert sum(sizes) == len(full) and max(sizes) - min(sizes) <= 1
        assert len(set().union(*(keys(p[s]) for p in parts))) == len(full)
    assert set(keys(parts[0][0])) != set(keys(split(train, test, "iid", 0, seed=6)[0]))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"partitioner": "shards"}, r"'shards'.*iid, dirichlet, question-type"),
    ({"num_partitions": 0}, r"num_partitions must be >= 1, got 0"),
    ({"partition_id": 5}, r"partition_id must be in \[0, 5\), got 5"),
    ({"partition_id": -1}, r"partition_id must be in \[0, 5\), got -1"),
    ({"dirichlet_alpha": 0.0}, r"dirichlet_alpha must be > 0, got 0.0"),
    ({"max_train": -1}, r"max_train must be >= 0 .*got -1"),
    ({"max_test": -2}, r"max_test must be >= 0 .*got -2"),
])
def test_client_split_validation(train: Dataset, test: Dataset, kwargs: dict, message: str) -> None:
    args = {"partitioner": "iid", "num_partitions": 5, "partition_id": 0, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        client_split(train, test, **args)


def test_empty_partition_is_reported(train: Dataset, test: Dataset) -> None:
    errors = []
    for pid in range(30):
        try:
            split(train, test, "dirichlet", pid, num_partitions=30, dirichlet_alpha=0.01)
        except ValueError as err:
            errors.append(str(err))
    assert errors
    assert all("is empty" in e and "larger dirichlet_alpha or fewer partitions" in e for e in errors)


def test_dirichlet_needs_same_answers_in_train_and_test(train: Dataset, test: Dataset) -> None:
    no_teal = test.filter(lambda a: a != "teal", input_columns="answer")
    with pytest.raises(ValueError, match=r"same answer values.*only in train: \['teal'\]"):
        split(train, no_teal, "dirichlet", 0)


# --- loader -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(train: Dataset) -> Dataset:
    """The first 120 train rows: all questions about the first 12 images."""
    return train.select(range(120))


def _split(rows: Dataset, processor, labels: list[str], transform=None) -> tuple[ClientSplit, Collator]:
    vocabulary = Vocabulary(tuple(labels), multi_answer=False)
    targets = [vocabulary.target([a]) for a in rows["answer"]]
    split_ = ClientSplit(rows, rows["question"], targets, processor.image_processor, transform=transform)
    return split_, Collator(processor.tokenizer, len(labels), multi_answer=False)


def test_batches_are_the_processors_encoding_of_each_row(small: Dataset, tiny_processor) -> None:
    labels = sorted(a for a in set(small["answer"]) if a != "yes")
    data, collator = _split(small, tiny_processor, labels)
    rows = small.to_list()
    batch = next(iter(make_loader(data, collator, len(rows), shuffle=False)))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_mask", "targets"}
    assert batch["pixel_values"].shape == (len(rows), 3, 64, 64) and batch["pixel_mask"].dtype == torch.long
    assert batch["input_ids"].shape == (len(rows), 16)
    for i in (0, 7, len(rows) - 1):
        with Image.open(rows[i]["image_path"]) as image:
            pixels = tiny_processor.image_processor(image.convert("RGB"), return_tensors="pt")
        assert torch.equal(batch["pixel_values"][i], pixels["pixel_values"][0])
        text = tiny_processor.tokenizer(rows[i]["question"], padding="max_length", max_length=16, return_tensors="pt")
        assert torch.equal(batch["input_ids"][i], text["input_ids"][0])
    expected = [-1 if r["answer"] == "yes" else labels.index(r["answer"]) for r in rows]
    assert batch["targets"].tolist() == expected and -1 in expected
    again = next(iter(make_loader(data, collator, len(rows), shuffle=False)))  # from the processed-image cache
    assert torch.equal(again["pixel_values"], batch["pixel_values"])


def test_images_of_different_sizes_are_padded_with_their_masks(tiny_processor) -> None:
    big = Image.new("RGB", (128, 64), "red")
    rows = Dataset.from_dict({"image": [big, big.resize((64, 64))]}).cast_column("image", DatasetImage())
    data = ClientSplit(rows, ["what color is it?"] * 2, [0, 0], tiny_processor.image_processor)
    items = [data[0], data[1]]
    assert items[0][0].shape != items[1][0].shape
    batch = Collator(tiny_processor.tokenizer, 1, multi_answer=False)(items)
    height = max(p.shape[1] for p, *_ in items)
    width = max(p.shape[2] for p, *_ in items)
    assert batch["pixel_values"].shape == (2, 3, height, width)
    for k, (pixels, mask, _, _) in enumerate(items):
        h, w = pixels.shape[1:]
        assert torch.equal(batch["pixel_values"][k, :, :h, :w], pixels)
        assert torch.equal(batch["pixel_mask"][k, :h, :w], mask)
        padding = torch.ones(height, width, dtype=torch.bool)
        padding[:h, :w] = False
        assert not batch["pixel_mask"][k][padding].any() and not batch["pixel_values"][k][:, padding].any()


def test_the_image_transform_is_applied(small: Dataset, tiny_processor) -> None:
    plain, collator = _split(small.select(range(3)), tiny_processor, ["no"])
    mirrored, _ = _split(small.select(range(3)), tiny_processor, ["no"], transform=ImageOps.mirror)
    a = next(iter(make_loader(plain, collator, 3, shuffle=False)))["pixel_values"]
    b = next(iter(make_loader(mirrored, collator, 3, shuffle=False)))["pixel_values"]
    assert torch.allclose(b, a.flip(-1))


def test_loader_errors(small: Dataset, tiny_processor) -> None:
    tokenizer = copy.deepcopy(tiny_processor.tokenizer)
    tokenizer.model_max_length = int(1e30)
    with pytest.raises(ValueError, match="model_max_length"):
        Collator(tokenizer, 1, multi_answer=False)
    with pytest.raises(ValueError, match="empty"):
        ClientSplit(small.select([]), [], [], tiny_processor.image_processor)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        make_loader(_split(small, tiny_processor, ["no"])[0], None, 0, shuffle=False)


def test_shuffled_batches_cover_every_example_once_in_a_seeded_order(small: Dataset, tiny_processor) -> None:
    labels = sorted(set(small["answer"]))
    data, collator = _split(small, tiny_processor, labels)

    def order(seed: int, workers: int = 0) -> list[tuple]:
        gen = torch.Generator().manual_seed(seed)
        out = []
        for batch in make_loader(data, collator, 8, shuffle=True, generator=gen, num_workers=workers):
            out += list(zip(batch["input_ids"].tolist(), batch["targets"].tolist(),
                            batch["pixel_values"].flatten(1).sum(1).round(decimals=3).tolist()))
        return out

    first = order(0)
    rows = next(iter(make_loader(data, collator, len(small), shuffle=False)))
    expected = list(zip(rows["input_ids"].tolist(), rows["targets"].tolist(),
                        rows["pixel_values"].flatten(1).sum(1).round(decimals=3).tolist()))
    assert Counter(map(repr, first)) == Counter(map(repr, expected))
    assert first == order(0) != order(1)
    assert order(0, workers=2) == first  # worker processes decode the same batches


def test_a_nodes_data_cache_gives_the_same_rows_without_rebuilding_them(tmp_path, tiny_cfg, monkeypatch) -> None:
    """With a cache dir (a deployed node's state-dir/data-cache) the easy-VQA rows are built once,
    saved with save_to_disk, and read back identical; a different spec gets its own entry."""
    from feddat_flwr.data import client_data
    from feddat_flwr.data.client_data import DataSpec, easyvqa_rows

    cfg = tiny_cfg({"data.max-train": 20, "data.max-test": 10, "preset": "domain"})
    spec = DataSpec.from_config(cfg, 1, 3, cache_dir=str(tmp_path / "cache"))
    built = easyvqa_rows(spec)
    (entry,) = (tmp_path / "cache").iterdir()
    assert sorted(p.name for p in entry.iterdir()) == ["test", "train"]

    def no_rebuild(*args):
        raise AssertionError("rebuilt the rows despite the cache")

    monkeypatch.setattr(client_data, "_build_easyvqa_rows", no_rebuild)
    cached = easyvqa_rows(spec)
    for a, b in zip(built[:2], cached[:2], strict=True):
        assert a.column_names == b.column_names and a.to_dict()["question"] == b.to_dict()["question"]
        assert a.to_dict()["answer"] == b.to_dict()["answer"]
    assert (built[2] is None) == (cached[2] is None)  # the domain transform is not cached, rebuilt alike
    monkeypatch.undo()
    easyvqa_rows(DataSpec.from_config(cfg, 2, 3, cache_dir=str(tmp_path / "cache")))
    assert len(list((tmp_path / "cache").iterdir())) == 2
