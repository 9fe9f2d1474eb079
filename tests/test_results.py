import json

import pytest
import torch
from peft import PeftModel
from transformers import ViltModel

from feddat_flwr.model.backbone import load_backbone_for
from feddat_flwr.results import RunRecorder, prepare_run_dir, save_adapter


def test_final_adapter_loads_with_peft_from_pretrained(tmp_path, tiny_cfg, tiny_model_dir):
    backbone = load_backbone_for(tiny_cfg())
    state = {k: torch.randn_like(v) for k, v in backbone.adapter_state("shared").items()}
    out = save_adapter(tmp_path / "shared-adapter", state, backbone.lora.peft_config(tiny_model_dir))
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


def test_recorder_writes_results_and_plot(tmp_path):
    recorder = RunRecorder(tmp_path, {"seed": 1}, {"model-path": "m"})
    evaluation = {v: {"mean": 0.5, "min": 0.25} for v in ("dat", "shared", "local", "majority")}
    recorder.add_round({"round": 1, "clients": {}, "bytes-up": 1, "bytes-down": 2, "seconds": 0.1})
    recorder.add_round({"round": 2, "clients": {}, "eval": evaluation, "bytes-up": 1, "bytes-down": 2,
                        "seconds": 0.1})
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert results["final"] == evaluation and results["config"] == {"seed": 1}
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
