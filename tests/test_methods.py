"""The method registry: every method is one entry, and a new one runs a round with no other change."""

import subprocess
import sys

import pytest
import torch

from feddat_flwr.config import ConfigError, load_config
from feddat_flwr.methods import METHODS, Method, get_method, register_method
from feddat_flwr.packing import unpack
from feddat_flwr.training.steps import logits
from feddat_flwr.training.losses import mkd_loss
from helpers.client_rounds import run_rounds, strategy_and_initial

CORE = ["feddat_flwr.client", "feddat_flwr.client_state", "feddat_flwr.config", "feddat_flwr.methods",
        "feddat_flwr.records", "feddat_flwr.results", "feddat_flwr.training.loop", "feddat_flwr.training.steps",
        "feddat_flwr.training.evaluate", "feddat_flwr.training.schedule", "feddat_flwr.model.backbone",
        "feddat_flwr.model.default_model", "feddat_flwr.data.partition", "feddat_flwr.data.views",
        "feddat_flwr.data.client_data", "feddat_flwr.data.vqa_format", "feddat_flwr.data.loader",
        "feddat_flwr.data.answers", "feddat_flwr.data.cli",
        "feddat_flwr.tools.launch", "feddat_flwr.tools.compare", "feddat_flwr.tools.tune", "feddat_flwr.tools.grid",
        "feddat_flwr.model.adapters", "feddat_flwr.model.lora", "feddat_flwr.model.bottleneck",
        *(f"feddat_flwr.fedpft.{m}" for m in ("subfm", "distill", "public_data", "proxy", "alignment", "backbone",
                                               "settings"))]


def test_the_core_and_the_tools_never_import_flower():
    code = ("import sys, importlib\n"
            f"for name in {CORE!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'flwr' or m.startswith('flwr.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_method_declares_a_consistent_role():
    baselines = {m.name for m in METHODS.values() if m.baseline}
    assert baselines == {"fedavg", "fedprox", "local-only", "fedpft-proxy"}
    assert {m.name for m in METHODS.values() if m.proxy} == {"fedpft-proxy"}
    assert {m.name for m in METHODS.values() if not m.communicates} == {"local-only"}
    assert get_method("feddat").personalised == "dat" and get_method("feddat").kd
    with pytest.raises(ValueError, match="Unknown method 'fedsgd'; allowed: feddat"):
        get_method("fedsgd")
    with pytest.raises(ValueError, match="registered already"):
        register_method(get_method("feddat"))


def _dat_task_step(backbone, head, optimizer, batch, s):
    """A toy method: train `local` and `shared` on the task loss of the DAT configuration only."""
    backbone.set_configuration("dat", s.lam, trainable=("local",))
    dat = mkd_loss(logits(backbone, head, backbone.embed(batch)), batch["targets"], None,
                   temperature=s.temperature, task_weight=1.0, kd_weight=0.0)
    backbone.set_configuration("shared", s.lam, trainable=("shared",))
    shared = mkd_loss(logits(backbone, head, backbone.embed(batch)), batch["targets"], None,
                      temperature=s.temperature, task_weight=1.0, kd_weight=0.0)
    optimizer.zero_grad(set_to_none=True)
    (dat.total + shared.total).backward()
    optimizer.step()
    return {"dat": dat, "shared": shared}


@pytest.fixture
def toy_method():
    method = register_method(Method("toy-dat", "test: task loss on DAT and shared", {"single": _dat_task_step},
                                    trains=("shared", "local"), communicates=True, personalised="dat"))
    yield method
    del METHODS[method.name]


def test_an_unregistered_method_is_a_config_error():
    with pytest.raises(ConfigError, match="'method' is 'toy-dat'; allowed: feddat"):
        load_config({"method": "toy-dat"})


def test_a_registered_method_runs_a_round_through_the_client_app_and_the_strategy(
        toy_method, tiny_model_dir, task_identity):
    run_config = {"model.name-or-path": tiny_model_dir, "data.max-train": 32, "data.max-test": 16,
                  "train.batch-size": 16, "method": "toy-dat", "num-rounds": 1}
    load_config(run_config)  # the registry is the only list of methods
    strategy, initial = strategy_and_initial(run_config, num_rounds=1, num_nodes=1)
    aggregate, _ = run_rounds(strategy, run_config, initial, [5], 1)

    record = strategy.history[0]
    assert record.failures == []
    assert {"dat-task", "shared-task", "loss"} <= set(record.clients["0"].train)
    assert 0 <= record.eval["dat"]["mean"] <= 1
    moved = unpack(aggregate.to_torch_state_dict(), initial)
    assert any(not torch.equal(moved[k], initial[k]) for k in initial)  # the toy step trained `shared`
