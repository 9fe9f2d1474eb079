"""One real federated run: `flwr run` on a private simulation SuperLink, Ray actors, tiny ViLT."""

import json

import pytest
from peft import PeftModel
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
