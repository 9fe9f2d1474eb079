"""Tests for the clients' visual domains and tasks: domains.py, tasks.py, views.py."""

from __future__ import annotations

import easy_vqa
import numpy as np
import pytest
from datasets import Dataset
from PIL import Image

from feddat_flwr.data.attributes import COLORS, SHAPES, split_attributes, words
from feddat_flwr.data.views import ClientView, client_view
from feddat_flwr.data.domains import DOMAINS, domain_transform
from feddat_flwr.data.easyvqa import load_easyvqa
from feddat_flwr.data.tasks import DESCRIBE_QUESTION, TASKS, VERIFY_TEMPLATES, make_task_split

PALETTE = {"black": (0, 0, 0), "blue": (0, 0, 255), "brown": (165, 42, 42), "gray": (128, 128, 128),
           "green": (0, 255, 0), "red": (255, 0, 0), "teal": (0, 128, 128), "yellow": (255, 255, 0)}
CHANGED = [d for d in DOMAINS if d != "clean"]


@pytest.fixture(scope="module")
def easyvqa_test() -> Dataset:
    return load_easyvqa("test")


@pytest.fixture(scope="module")
def images(easyvqa_test: Dataset) -> list[tuple[Image.Image, str]]:
    """(RGB image, true colour) of the first 200 test images whose colour is known."""
    attributes = split_attributes("test")
    paths = dict(zip(easyvqa_test["image_id"][:], easyvqa_test["image_path"][:]))
    ids = sorted(attributes)[:200]
    return [(Image.open(paths[i]).convert("RGB"), attributes[i].color) for i in ids]


def apply(domain: str, image: Image.Image, seed: int = 0) -> Image.Image:
    transform = domain_transform(domain, seed)
    return image if transform is None else transform(image)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def background(image: Image.Image) -> np.ndarray:
    px = pixels(image)
    return np.median(np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]]), axis=0)


def trivial_colour(image: Image.Image) -> str:
    """Nearest palette colour to the median of the pixels far from the border's median colour."""
    px = pixels(image)
    distance = np.linalg.norm(px - background(image), axis=-1)
    colour = np.median(px[distance > 0.5 * distance.max()], axis=0)
    return min(PALETTE, key=lambda name: np.linalg.norm(np.array(PALETTE[name]) - colour))


# --- domains ------------------------------------------------------------------------------

def test_domain_transform_names() -> None:
    assert domain_transform("clean", 0) is None
    with pytest.raises(ValueError, match=r"'sepia'.*clean, inverted, noise, blur, rotate"):
        domain_transform("sepia", 0)


@pytest.mark.parametrize("domain", CHANGED)
def test_domain_is_deterministic_and_differs_from_clean(domain: str, images) -> None:
    first, second = images[0][0], images[1][0]
    out = apply(domain, first, seed=3)
    np.random.seed(123)  # global RNG state must not matter, nor the order of the images
    apply(domain, second, seed=3)
    assert np.array_equal(pixels(apply(domain, first, seed=3)), pixels(out))
    assert out.size == first.size and out.mode == "RGB"
    some = [image for image, _ in images[:10]]
    for image in some:  # at least 20 pixels clearly changed
        assert (np.abs(pixels(apply(domain, image)) - pixels(image)).max(axis=-1) > 40).sum() >= 20
    if domain in ("noise", "rotate"):
        assert any(not np.array_equal(pixels(apply(domain, im, seed=3)), pixels(apply(domain, im, seed=4)))
                   for im in some)


def test_domains_keep_the_colour_determinable(images) -> None:
    accuracy = {d: np.mean([trivial_colour(apply(d, image)) == colour for image, colour in images])
                for d in DOMAINS}
    assert accuracy["clean"] >= 0.95, accuracy
    for domain in CHANGED:
        assert accuracy[domain] >= accuracy["clean"] - 0.05, accuracy


def test_inverted_darkens_only_the_background(images) -> None:
    for image, colour in images[:20]:
        before, after = pixels(image), pixels(apply("inverted", image))
        shape = np.all(before == PALETTE[colour], axis=-1)
        assert np.array_equal(after[shape], before[shape])
        assert background(image).min() >= 230 and background(apply("inverted", image)).max() <= 70


def test_rotate_keeps_the_whole_shape(images) -> None:
    for image, colour in images[:20]:
        area = [np.all(np.abs(pixels(im) - PALETTE[colour]) < 60, axis=-1).sum()
                for im in (image, apply("rotate", image))]
        assert abs(area[1] - area[0]) <= 0.15 * area[0] + 4, area


# --- tasks --------------------------------------------------------------------------------

def test_task_names_and_vqa(easyvqa_test: Dataset) -> None:
    assert make_task_split(easyvqa_test, "vqa", 0) is easyvqa_test
    with pytest.raises(ValueError, match=r"'caption'.*vqa, verify, describe"):
        make_task_split(easyvqa_test, "caption", 0)
    foreign = Dataset.from_dict({"image_path": ["/x.png"], "image_id": [0]})
    with pytest.raises(ValueError, match=r"'/x.png' is not an easy-VQA image"):
        make_task_split(foreign, "describe", 0)


@pytest.mark.parametrize("task", ["verify", "describe"])
def test_task_rows_are_per_known_image(task: str, easyvqa_test: Dataset) -> None:
    rows = make_task_split(easyvqa_test, task, 0)
    assert rows.features == easyvqa_test.features
    assert set(rows["question_type"][:]) == {task}
    assert set(rows["image_id"][:]) == set(split_attributes("test"))
    assert len(rows) == len(split_attributes("test")) * (len(VERIFY_TEMPLATES) if task == "verify" else 1)
    head = easyvqa_test.select(range(500))  # a part of the split gets the same rows for its images
    head_ids = set(head["image_id"][:])
    expected = [row for row in rows.to_list() if row["image_id"] in head_ids]
    assert make_task_split(head, task, 0).to_list() == expected


def test_verify_is_seeded_balanced_and_correct(easyvqa_test: Dataset) -> None:
    rows = make_task_split(easyvqa_test, "verify", 0)
    assert rows.to_list() == make_task_split(easyvqa_test, "verify", 0).to_list()
    assert rows["question"][:] != make_task_split(easyvqa_test, "verify", 1)["question"][:]
    answers = np.array(rows["answer"][:])
    assert set(answers) == {"yes", "no"} and 0.4 <= (answers == "yes").mean() <= 0.6
    attributes = split_attributes("test")
    for row in rows:
        truth = attributes[row["image_id"]]
        colours = {w for w in words(row["question"]) if w in COLORS}
        shapes = {w for w in words(row["question"]) if w in SHAPES}
        assert colours or shapes
        expected = colours <= {truth.color} and shapes <= {truth.shape}
        assert row["answer"] == ("yes" if expected else "no"), row


def test_describe_labels_match_each_splits_attributes() -> None:
    for split in ("train", "test"):
        attributes = split_attributes(split)
        rows = make_task_split(load_easyvqa(split), "describe", 0)
        assert set(rows["question"][:]) == {DESCRIBE_QUESTION}
        for image_id, answer in zip(rows["image_id"][:], rows["answer"][:]):
            assert answer == f"{attributes[image_id].color} {attributes[image_id].shape}"
        assert len(set(rows["answer"][:])) == len(COLORS) * len(SHAPES)


def test_task_texts_are_in_the_default_model_vocabulary() -> None:
    """Every word is in the vocabulary default_model._make_processor builds (train questions,
    answers and captions), and every text fits its text length with [CLS] and [SEP]."""
    from feddat_flwr.model.default_model import CAPTIONS, RECIPE

    questions, answers, _ = easy_vqa.get_train_questions()
    captions = [c.format(color=k, shape=s) for c in CAPTIONS for k in COLORS for s in SHAPES]
    vocabulary = {w for text in [*questions, *answers, *captions] for w in words(text)}
    texts = [DESCRIBE_QUESTION, *(f"{c} {s}" for c in COLORS for s in SHAPES)]
    texts += [t.format(color=c, shape=s) for ts in VERIFY_TEMPLATES.values() for t in ts
              for c in COLORS for s in SHAPES]
    for text in texts:
        assert set(words(text)) <= vocabulary and len(words(text)) + 2 <= RECIPE.text_length, text


# --- client views ---------------------------------------------------------------------------

def test_client_view() -> None:
    assert [client_view("domain", i).domain for i in range(5)] == list(DOMAINS)
    assert client_view("domain", 5) == ClientView(DOMAINS[0], "vqa")
    assert [client_view("task", i).task for i in range(4)] == [*TASKS, TASKS[0]]
    assert {client_view("same", i) for i in range(6)} == {ClientView("clean", "vqa")}
    with pytest.raises(ValueError, match="Unknown client views 'mixed'; allowed: same, domain, task"):
        client_view("mixed", 0)
