import json

import pytest
import torch
from peft import PeftModel
from transformers import ViltModel

from feddat_flwr.model.backbone import load_backbone_for
from feddat_flwr.records import EvalReport, Results, RoundRecord, TrainReport, completed_results
from feddat_flwr.results import RunRecorder, prepare_run_dir, save_adapter


def test_final_adapter_loads_with_peft_from_pretrained(tmp_path, tiny_cfg, tiny_model_dir):
    backbone = load_backbone_for(tiny_cfg())
    state = {k: torch.randn_like(v) for k, v in backbone.adapter_state("shared").items()}
    out = save_adapter(tmp_path / "shared-adapter", state, backbone.spec.peft_config(tiny_model_dir))
    model = PeftModel.from_pretrained(ViltModel.from_pretrained(tiny_model_dir), str(out))
    loaded = {n.replace(".default.", "."): p for n, p in model.named_parameters() if "lora_" in n}
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_run_dir_refuses_to_overwrite_results(tmp_path):
    run_dir = prepare_run_dir(str(tmp_path / "run"), run_id=1)
    assert run_dir.is_dir() and run_dir.is_absolute()
    (run_dir / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="is not empty"):
        prepare_run_dir(str(run_dir), run_id=2)


def _round(number, evaluated):
    record = RoundRecord(round=number, lr=0.01, bytes_up=1, bytes_down=2)
    client = record.client(0, node_id=7)
    client.num_examples = 10
    client.train = TrainReport(0, 10, {"loss": 0.5}, seconds=1.0, steps=1, peak_rss_mb=1.0).record()
    if evaluated:
        client.eval = EvalReport(0, 5, {"dat": 0.6, "shared": 0.4, "local": 0.2, "majority": 0.2}).record()
    record.close(seconds=0.1)
    return record


def test_recorder_writes_results_that_read_back_and_plot(tmp_path):
    recorder = RunRecorder(tmp_path, {"seed": 1, "num-rounds": 2}, {"model-path": "m"})
    assert Results.load(tmp_path).rounds == []  # written before the first round
    recorder.add_round(_round(1, evaluated=False))
    assert completed_results(tmp_path) is None  # not finished yet
    recorder.add_round(_round(2, evaluated=True))
    raw = json.loads((tmp_path / "results.json").read_text())
    assert [r["round"] for r in raw["rounds"]] == [1, 2] and "eval" not in raw["rounds"][0]
    assert raw["rounds"][1]["clients"]["0"]["eval"] == {"dat": 0.6, "shared": 0.4, "local": 0.2,
                                                        "majority": 0.2, "num-examples": 5}
    assert raw["final"]["dat"] == {"mean": 0.6, "min": 0.6} and raw["config"]["seed"] == 1
    results = completed_results(tmp_path)
    assert results is not None and results.to_json() == raw  # the schema round-trips
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
