"""One real federated run: `flwr run` on a private simulation SuperLink, Ray actors, tiny ViLT."""

import json

import pytest
from datasets import Dataset, DatasetDict, Image as DatasetImage
from peft import PeftModel
from PIL import Image
from transformers import ViltModel

from feddat_flwr.tools.launch import run_simulation


@pytest.mark.e2e
def test_two_round_federation_writes_complete_results(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    outcome = run_simulation(
        {"model.name-or-path": tiny_model_dir, "num-rounds": 2, "data.max-train": 48, "data.max-test": 24,
         "train.batch-size": 16, "strategy.weighting": "uniform", "output-dir": str(out)},
        num_clients=3, work_dir=tmp_path / "flwr", timeout=600, stream=False,
    )
    assert outcome.status == "finished:completed"
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["strategy"]["weighting"] == "uniform"
    assert results["config"]["num-rounds"] == 2
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for record in results["rounds"]:
        assert set(record["clients"]) == {"0", "1", "2"}
        for client in record["clients"].values():
            assert client["num-examples"] == 48
            assert {"loss", "shared-task", "shared-kd", "dat-task", "dat-kd", "seconds"} <= set(client["train"])
            assert set(client["eval"]) == {"dat", "shared", "local", "majority", "num-examples"}
        assert set(record["eval"]) == {"dat", "shared", "local", "majority"}
        assert record["bytes-up"] > 0 and record["bytes-down"] > record["bytes-up"]
        assert record["failures"] == [] and record["seconds"] > 0
    assert results["final"] == results["rounds"][-1]["eval"]
    assert (out / "accuracy.png").is_file()
    PeftModel.from_pretrained(ViltModel.from_pretrained(tiny_model_dir), str(out / "shared-adapter"))


def _client_dataset(path, answers_of, n=24, multi=False):
    colours = ["red", "green", "blue"]
    rows = {"image": [Image.new("RGB", (64, 64), colours[i % 3]) for i in range(n)],
            "question": ["what color is the shape?"] * n}
    rows["answers" if multi else "answer"] = [answers_of(i) for i in range(n)]
    ds = Dataset.from_dict(rows).cast_column("image", DatasetImage())
    DatasetDict({"train": ds, "test": ds.select(range(8))}).save_to_disk(str(path))


@pytest.mark.e2e
def test_clients_train_on_their_own_datasets_with_different_label_spaces(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    colours = ["red", "green", "blue"]
    _client_dataset(data / "partition_0", lambda i: colours[i % 3])
    _client_dataset(data / "partition_1", lambda i: "yes" if i % 2 else "no")
    _client_dataset(data / "partition_2", lambda i: [colours[i % 3]] * 3 + ["purple"], multi=True)
    out = tmp_path / "run"
    run_simulation({"model.name-or-path": tiny_model_dir, "num-rounds": 1, "train.batch-size": 8,
                    "data.path": str(data), "output-dir": str(out)},
                   num_clients=3, work_dir=tmp_path / "flwr", timeout=600, stream=False)
    results = json.loads((out / "results.json").read_text())
    (record,) = results["rounds"]
    assert record["failures"] == [] and set(record["clients"]) == {"0", "1", "2"}
    for client in record["clients"].values():
        assert client["num-examples"] == 24 and client["train"]["dropped-examples"] == 0
        assert 0 <= client["eval"]["dat"] <= 1
    assert record["clients"]["1"]["eval"]["majority"] == 0.5  # yes/no, alternating
    # every answer given 24 times: the tie goes to "blue", which scores 1 on 2 of the 8 test rows
    assert record["clients"]["2"]["eval"]["majority"] == pytest.approx(2 / 8)
