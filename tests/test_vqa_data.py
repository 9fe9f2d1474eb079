"""Clients' own datasets on disk: the formats, the tools that make them, VQA scoring, bad data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict, Image as DatasetImage, load_from_disk
from PIL import Image

from feddat_flwr.client import evaluate_client, train_client
from feddat_flwr.config import load_config
from feddat_flwr.data import cli
from feddat_flwr.data.answers import Vocabulary, vqa_score
from feddat_flwr.data.client_data import DataSpec, load_client_data
from feddat_flwr.data.loader import answer_scores
from feddat_flwr.data.vqa_format import DataError, load_vqa
from feddat_flwr.model.backbone import load_backbone_for
from feddat_flwr.training.losses import task_loss

COLOURS = ("red", "green", "blue")


def _image(colour: str, size=(64, 64)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _rows(n: int, multi: bool = False, image_path_dir: Path | None = None) -> dict:
    colours = [COLOURS[i % 3] for i in range(n)]
    rows: dict = {"question": ["what color is the image?"] * n}
    if multi:  # three annotators agree, one says "purple"
        rows["answers"] = [[c, c, c, "purple"] for c in colours]
    else:
        rows["answer"] = colours
    if image_path_dir is None:
        rows["image"] = [_image(c) for c in colours]
    else:
        image_path_dir.mkdir(parents=True, exist_ok=True)
        for c in COLOURS:
            _image(c).save(image_path_dir / f"{c}.png")
        rows["image_path"] = [f"images/{c}.png" for c in colours]
    return rows


def _save(path: Path, rows: dict, split: bool = True) -> Path:
    ds = Dataset.from_dict(rows)
    if "image" in rows:
        ds = ds.cast_column("image", DatasetImage())
    (DatasetDict({"train": ds, "test": ds.select(range(min(6, len(ds))))}) if split else ds).save_to_disk(str(path))
    return path


def _spec(cfg, path: Path, partition_id: int = 0) -> DataSpec:
    return DataSpec.from_config(cfg, partition_id, 1, data_path=str(path))


# --- formats ------------------------------------------------------------------------------

def test_a_saved_datasetdict_with_images_trains_and_evaluates(tmp_path, tiny_cfg):
    path = _save(tmp_path / "client", _rows(24))
    cfg = tiny_cfg()
    backbone = load_backbone_for(cfg)
    data = load_client_data(_spec(cfg, path), backbone.processor)
    assert data.labels == ["blue", "green", "red"] and len(data.train) == 24 and len(data.test) == 6
    _, report, state = train_client(backbone, data, None, backbone.initial_adapter(0), cfg, lr=0.01, server_round=1)
    assert report.num_examples == 24 and report.dropped_examples == 0 and "dat-task" in report.losses
    assert 0 <= evaluate_client(backbone, data, state, backbone.initial_adapter(0), cfg).accuracy["dat"] <= 1


def test_a_single_dataset_is_split_by_test_fraction_with_the_seed(tmp_path):
    path = _save(tmp_path / "client", {**_rows(20), "id": list(range(20))}, split=False)
    a = load_vqa(path, test_fraction=0.25, seed=1)
    b = load_vqa(path, test_fraction=0.25, seed=1)
    c = load_vqa(path, test_fraction=0.25, seed=2)
    assert (len(a.train), len(a.test)) == (15, 5)
    assert list(a.test["id"]) == list(b.test["id"]) != list(c.test["id"])  # other columns are kept, and ignored
    assert sorted([*a.train["id"], *a.test["id"]]) == list(range(20))
    with pytest.raises(DataError, match="single Dataset of 20 rows: set data.test-fraction"):
        load_vqa(path, test_fraction=0.0, seed=1)


def test_image_path_column_relative_to_the_dataset_directory(tmp_path, tiny_cfg):
    path = tmp_path / "client"
    _save(path, _rows(9, image_path_dir=path / "images"))
    cfg = tiny_cfg()
    data = load_client_data(_spec(cfg, path), load_backbone_for(cfg).processor)
    pixels = data.train[0][0]
    red = load_backbone_for(cfg).processor.image_processor(_image("red"), return_tensors="pt")["pixel_values"][0]
    assert torch.equal(pixels, red)


def test_multi_answer_data_has_soft_vqa_targets_and_vqa_accuracy(tmp_path, tiny_cfg):
    path = _save(tmp_path / "client", _rows(12, multi=True))
    cfg = tiny_cfg({"data.max-answers": 4})
    data = load_client_data(_spec(cfg, path), load_backbone_for(cfg).processor)
    assert data.vocabulary.multi_answer and data.labels == ["blue", "green", "purple", "red"]
    batch = data.collator([data.train[i] for i in range(3)])
    # red, red, red, purple -> red 1.0, purple 1/3
    assert batch["targets"][0].tolist() == pytest.approx([0, 0, 1 / 3, 1.0])
    # Majority: every answer is given 12 times in training, so the tie goes to "blue", which scores
    # 1 on the 2 blue rows of the 6 test rows and 0 elsewhere ("purple" would score 1/3 on all).
    assert data.majority == pytest.approx(2 / 6)


def test_the_vocabulary_keeps_the_most_frequent_answers_and_drops_examples_outside_it(tmp_path, tiny_cfg):
    rows = _rows(12)
    rows["answer"] = ["red"] * 6 + ["green"] * 4 + ["blue"] * 2
    path = _save(tmp_path / "client", rows)
    cfg = tiny_cfg({"data.max-answers": 2})
    backbone = load_backbone_for(cfg)
    data = load_client_data(_spec(cfg, path), backbone.processor)
    assert data.labels == ["green", "red"] and len(data.train) == 10 and data.dropped == 2
    _, report, _ = train_client(backbone, data, None, backbone.initial_adapter(0), cfg, lr=0.01, server_round=1)
    assert report.dropped_examples == 2 and report.to_metrics()["train-dropped-examples"] == 2


# --- the maths, by hand --------------------------------------------------------------------

def test_vqa_score_and_accuracy_by_hand():
    assert vqa_score("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx(2 / 3)
    assert vqa_score("red", ["red"] * 4) == 1.0 and vqa_score("green", ["red"]) == 0.0
    v = Vocabulary(("blue", "red"), multi_answer=True)
    assert v.target(["red", "red", "blue", "green"]) == {1: pytest.approx(2 / 3), 0: pytest.approx(1 / 3)}
    assert v.target(["green"]) is None
    logits = torch.tensor([[0.0, 2.0], [3.0, 1.0]])
    targets = torch.tensor([[1 / 3, 2 / 3], [0.0, 1.0]])
    assert answer_scores(logits, targets).tolist() == pytest.approx([2 / 3, 0.0])
    assert answer_scores(logits, torch.tensor([1, -1])).tolist() == [1.0, 0.0]


def test_task_loss_is_bce_with_soft_scores_or_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, 2.0], [3.0, -1.0]])
    soft = torch.tensor([[1 / 3, 2 / 3], [0.0, 1.0]])

    def bce(z, t):
        p = 1 / (1 + math.exp(-z))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    expected = sum(bce(float(z), float(t)) for zs, ts in zip(logits, soft) for z, t in zip(zs, ts)) / 2
    assert float(task_loss(logits, soft)) == pytest.approx(expected, rel=1e-6)
    ce = -(math.log(math.exp(2) / (1 + math.exp(2))) + math.log(math.exp(-1) / (math.exp(3) + math.exp(-1)))) / 2
    assert float(task_loss(logits, torch.tensor([1, 1]))) == pytest.approx(ce, rel=1e-6)


# --- bad data: clear errors before any training ---------------------------------------------

def test_every_bad_dataset_is_a_clear_error(tmp_path):
    good = _rows(6)

    def bad(name, rows=None, split=True, mutate=None):
        path = _save(tmp_path / name, rows or good, split)
        if mutate:
            mutate(path)
        return path

    with pytest.raises(DataError, match="does not exist"):
        load_vqa(tmp_path / "nowhere", test_fraction=0.2, seed=0)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="is not a dataset saved with datasets' save_to_disk"):
        load_vqa(tmp_path / "plain", test_fraction=0.2, seed=0)
    misspelt = {("questoin" if k == "question" else k): v for k, v in good.items()}
    with pytest.raises(DataError, match=r"no column 'question'; found .*Did you mean 'questoin'"):
        load_vqa(bad("misspelt", misspelt), test_fraction=0.2, seed=0)
    with pytest.raises(DataError, match="column 'question' must be a string, got Value.*int64"):
        load_vqa(bad("numbers", {**good, "question": list(range(6))}), test_fraction=0.2, seed=0)
    with pytest.raises(DataError, match=r"row 2: the question must be a non-empty string, got ''"):
        load_vqa(bad("blank", {**good, "question": ["a?", "b?", "", "c?", "d?", "e?"]}), test_fraction=0.2, seed=0)
    with pytest.raises(DataError, match=r"has splits \['train', 'validation'\]"):
        path = tmp_path / "splits"
        DatasetDict({"train": Dataset.from_dict(good), "validation": Dataset.from_dict(good)}).save_to_disk(str(path))
        load_vqa(path, test_fraction=0.2, seed=0)
    with pytest.raises(DataError, match="the test split is empty"):
        path = tmp_path / "empty"
        ds = Dataset.from_dict(_rows(6, image_path_dir=path / "images"))
        DatasetDict({"train": ds, "test": ds.select([])}).save_to_disk(str(path))
        load_vqa(path, test_fraction=0.2, seed=0)
    broken = tmp_path / "broken"
    _save(broken, _rows(6, image_path_dir=broken / "images"))
    (broken / "images" / "green.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"\(train\), row 1: cannot decode the image '.*green.png'"):
        load_vqa(broken, test_fraction=0.2, seed=0)


def test_a_client_with_no_answer_in_its_vocabulary_is_an_error(tmp_path, tiny_cfg, monkeypatch):
    # Impossible with a vocabulary built from the client's own answers; guarded all the same.
    path = _save(tmp_path / "client", _rows(6))
    monkeypatch.setattr(Vocabulary, "build", classmethod(lambda cls, *a, **k: cls(("purple",), False)))
    cfg = tiny_cfg({"seed": 3})
    with pytest.raises(DataError, match=r"none of its 6 training examples has an answer in its vocabulary"):
        load_client_data(_spec(cfg, path), load_backbone_for(cfg).processor)


def test_partitions_must_match_the_supernodes(tmp_path, tiny_cfg):
    for i in range(2):
        _save(tmp_path / f"partition_{i}", _rows(6))
    cfg = tiny_cfg({"data.path": str(tmp_path)})
    assert DataSpec.from_config(cfg, 1, 2).source == str(tmp_path / "partition_1")
    with pytest.raises(DataError, match="holds 2 client datasets .* the federation has 3 SuperNodes"):
        DataSpec.from_config(cfg, 0, 3)


# --- tools ----------------------------------------------------------------------------------

def test_from_vqa_reads_official_vqa_json(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for image_id, colour in ((9, "red"), (42, "blue")):
        _image(colour).save(images / f"COCO_train2014_{image_id:012d}.jpg")
    questions = {"questions": [{"image_id": 9, "question": "what color?", "question_id": 90},
                               {"image_id": 42, "question": "what color is it?", "question_id": 420}]}
    annotations = {"annotations": [
        {"question_id": 90, "image_id": 9, "question_type": "what color", "answers": [
            {"answer": a, "answer_id": k + 1} for k, a in enumerate(["red"] * 9 + ["pink"])]},
        {"question_id": 420, "image_id": 42, "question_type": "what color", "answers": [
            {"answer": "blue", "answer_id": k + 1} for k in range(10)]}]}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    assert cli.main(["from-vqa", "--questions", str(tmp_path / "q.json"), "--annotations", str(tmp_path / "a.json"),
                     "--images", str(images), "--out", str(tmp_path / "vqa")]) == 0
    ds = load_from_disk(str(tmp_path / "vqa"))
    assert ds["answers"][0] == ["red"] * 9 + ["pink"] and ds["question_type"] == ["what color"] * 2
    assert ds[1]["image"].getpixel((0, 0))[2] > 200  # blue, embedded
    data = load_vqa(tmp_path / "vqa", test_fraction=0.5, seed=0)
    assert data.multi_answer


def test_from_folder_reads_imagefolder_metadata_and_names_bad_rows(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    for c in COLOURS:
        _image(c).save(folder / f"{c}.png")
    lines = [{"file_name": f"{c}.png", "question": "what color?", "answer": c} for c in COLOURS]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    assert cli.main(["from-folder", "--images", str(folder), "--out", str(tmp_path / "out")]) == 0
    ds = load_from_disk(str(tmp_path / "out"))
    assert ds["answer"] == list(COLOURS) and ds.features["image"] == DatasetImage()
    lines.append({"file_name": "missing.png", "question": "q?", "answer": "red"})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    assert cli.main(["from-folder", "--images", str(folder), "--out", str(tmp_path / "out2")]) == 2
    assert "metadata.jsonl:4: image file 'missing.png' not found" in capsys.readouterr().err


def test_split_and_describe_a_saved_dataset(tmp_path, capsys):
    rows = _rows(30)
    rows["question_type"] = ["colour"] * 15 + ["other"] * 15
    _save(tmp_path / "all", rows, split=False)
    assert cli.main(["split", "--dataset", str(tmp_path / "all"), "--partitioner", "question-type",
                     "--num-partitions", "2", "--out", str(tmp_path / "parts")]) == 0
    parts = [load_from_disk(str(tmp_path / "parts" / f"partition_{i}")) for i in range(2)]
    assert {p["question_type"][0] for p in parts} == {"colour", "other"} and sum(len(p) for p in parts) == 30
    assert cli.main(["describe", str(tmp_path / "parts")]) == 0
    table = capsys.readouterr().out
    assert "| partition_0 | all | 15 | 3 | False |" in table and "64x64 / 64x64 / 64x64" in table


def test_an_easyvqa_export_trains_exactly_like_the_builtin_path(tmp_path, tiny_cfg):
    overrides = {"preset": "domain", "data.max-train": 24, "data.max-test": 12, "seed": 4}
    assert cli.main(["split", "--easy-vqa", "--num-partitions", "3", "--out", str(tmp_path / "export"),
                     *[f"-c{k}={v}" for k, v in overrides.items()], "-c", f"model.name-or-path={tiny_cfg()['model']['name-or-path']}"]) == 0
    results = []
    for cfg in (tiny_cfg(overrides), tiny_cfg({**overrides, "data.path": str(tmp_path / "export")})):
        backbone = load_backbone_for(cfg)
        data = load_client_data(DataSpec.from_config(cfg, 1, 3), backbone.processor)  # the noisy domain
        g = backbone.initial_adapter(4)
        shared, report, state = train_client(backbone, data, None, g, cfg, lr=0.01, server_round=1)
        results.append((data.labels, shared, report.losses, evaluate_client(backbone, data, state, g, cfg).accuracy))
    (labels_a, shared_a, losses_a, acc_a), (labels_b, shared_b, losses_b, acc_b) = results
    assert labels_a == labels_b and losses_a == losses_b and acc_a == acc_b
    assert all(torch.equal(shared_a[k], shared_b[k]) for k in shared_a)


def test_the_server_stops_before_training_when_datasets_and_supernodes_differ(tmp_path):
    from feddat_flwr.flower.server import _check_client_datasets

    for i in range(2):
        _save(tmp_path / f"partition_{i}", _rows(6))

    class Grid:
        def __init__(self, n):
            self.n = n

        def get_node_ids(self):
            return list(range(self.n))

    _check_client_datasets(Grid(2), str(tmp_path))
    with pytest.raises(DataError, match="holds 2 client datasets .* the federation has 5 SuperNodes"):
        _check_client_datasets(Grid(5), str(tmp_path))


def test_only_the_shared_adapter_leaves_a_client_with_its_own_dataset(tmp_path, tiny_model_dir, task_identity):
    import client_app
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

    from feddat_flwr.packing import pack, unpack

    path = _save(tmp_path / "client", _rows(12, multi=True))
    run_config = {"model.name-or-path": tiny_model_dir, "train.batch-size": 8}
    context = Context(run_id=1, node_id=77, node_config={"data-path": str(path)}, state=RecordDict(),
                      run_config=run_config)  # no partition-id: the node id keys the client
    initial = load_backbone_for(load_config(run_config)).initial_adapter(42)
    content = RecordDict({"arrays": ArrayRecord(pack(initial)),
                          "config": ConfigRecord({"lr": 0.01, "server-round": 1})})
    reply = client_app.train(Message(content=content, dst_node_id=77, message_type="train"), context)
    assert set(reply.content.keys()) == {"arrays", "metrics"}
    assert set(unpack(reply.content["arrays"].to_torch_state_dict(), initial)) == set(initial)
    metrics = dict(reply.content["metrics"])
    assert metrics["partition-id"] == 77
    assert all(isinstance(v, (int, float)) for v in metrics.values())  # numbers only: no rows, no answers
