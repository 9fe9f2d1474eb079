"""Tests for feddat_flwr.data: easy-VQA loading, client partitions, tensor encoding."""

from __future__ import annotations

import copy
import os
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image, ImageOps

from feddat_flwr.data.easyvqa import QUESTION_TYPES, load_easyvqa
from feddat_flwr.data.encode import encode_split, iterate_batches, label_space
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


def row_of(table: torch.Tensor, row: torch.Tensor) -> int:
    """Index of the single row of ``table`` equal to ``row``."""
    (match,) = (table == row).flatten(1).all(1).nonzero()[:, 0].tolist()
    return match


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
    labels = label_space(train)
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


# --- encode -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(train: Dataset) -> Dataset:
    """The first 120 train rows: all questions about the first 12 images."""
    return train.select(range(120))


def test_label_space(small: Dataset) -> None:
    labels = label_space(small)
    assert labels == sorted(set(small["answer"][:]))


def test_encode_split_dedups_and_reconstructs(small: Dataset, tiny_processor) -> None:
    labels = [a for a in label_space(small) if a != "yes"]
    enc = encode_split(small, tiny_processor, labels, chunk_size=5)
    rows = small.to_list()
    assert len(enc) == len(rows)
    n_images = len({r["image_path"] for r in rows})
    assert n_images < len(rows)
    assert enc.pixel_values.shape == (n_images, 3, 64, 64) and enc.pixel_mask.shape == (n_images, 64, 64)
    assert enc.pixel_mask.dtype == torch.long
    n_questions = len({r["question"] for r in rows})
    assert n_questions < len(rows)
    assert enc.input_ids.shape == enc.attention_mask.shape == enc.token_type_ids.shape == (n_questions, 16)
    for i in (0, 7, len(rows) - 1):
        row = rows[i]
        with Image.open(row["image_path"]) as image:
            pixels = tiny_processor.image_processor(image.convert("RGB"), return_tensors="pt")
        assert torch.equal(enc.pixel_values[enc.image_index[i]], pixels["pixel_values"][0])
        text = tiny_processor.tokenizer(row["question"], padding="max_length", max_length=16,
                                        return_tensors="pt")
        assert torch.equal(enc.input_ids[enc.question_index[i]], text["input_ids"][0])
        assert torch.equal(enc.attention_mask[enc.question_index[i]], text["attention_mask"][0])
    expected = [-1 if r["answer"] == "yes" else labels.index(r["answer"]) for r in rows]
    assert enc.labels.tolist() == expected and -1 in expected
    same = encode_split(small, tiny_processor, labels)  # default chunk size
    assert torch.equal(same.pixel_values, enc.pixel_values)


def test_encode_split_applies_image_transform(small: Dataset, tiny_processor) -> None:
    plain = encode_split(small.select(range(3)), tiny_processor, ["no"])
    mirrored = encode_split(small.select(range(3)), tiny_processor, ["no"], image_transform=ImageOps.mirror)
    assert torch.allclose(mirrored.pixel_values, plain.pixel_values.flip(-1))


def test_encode_split_errors(small: Dataset, tiny_processor) -> None:
    tokenizer = copy.deepcopy(tiny_processor.tokenizer)
    tokenizer.model_max_length = int(1e30)
    unset = SimpleNamespace(tokenizer=tokenizer, image_processor=tiny_processor.image_processor)
    with pytest.raises(ValueError, match="model_max_length"):
        encode_split(small.select(range(2)), unset, ["no"])
    with pytest.raises(ValueError, match="empty"):
        encode_split(small.select([]), tiny_processor, ["no"])
    with pytest.raises(ValueError, match="duplicates"):
        encode_split(small, tiny_processor, ["no", "no"])


def test_iterate_batches(small: Dataset, tiny_processor) -> None:
    enc = encode_split(small, tiny_processor, label_space(small))
    batches = list(iterate_batches(enc, 8, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b["labels"]) for b in batches[:-1]] == [8] * (len(batches) - 1)
    assert 0 < len(batches[-1]["labels"]) <= 8
    first = batches[0]
    assert set(first) == {"input_ids", "attention_mask", "token_type_ids",
                          "pixel_values", "pixel_mask", "labels"}
    assert first["pixel_values"].shape[1:] == (3, 64, 64) and first["input_ids"].shape[1] == 16
    # Every example exactly once: match each batch row back to its (image, question, label).
    seen = Counter()
    for batch in batches:
        for b in range(len(batch["labels"])):
            img = row_of(enc.pixel_values, batch["pixel_values"][b])
            seen[(img, row_of(enc.input_ids, batch["input_ids"][b]), int(batch["labels"][b]))] += 1
    expected = Counter(zip(enc.image_index.tolist(), enc.question_index.tolist(), enc.labels.tolist()))
    assert seen == expected

    def order(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([b["labels"] for b in iterate_batches(enc, 8, shuffle=True, generator=gen)]).tolist()

    assert order(0) == order(0) != order(1)
    in_order = torch.cat([b["labels"] for b in iterate_batches(enc, 7, shuffle=False)])
    assert torch.equal(in_order, enc.labels)
