"""FedDAT's freeze/update properties on a tiny ViLT, through the client code path."""

import pytest
import torch

from feddat_flwr import client as client_mod
from feddat_flwr.client import evaluate_client, train_client
from feddat_flwr.data.client_data import DataSpec, load_client_data
from feddat_flwr.methods import METHODS
from feddat_flwr.model.backbone import ADAPTER_KINDS, load_backbone_for
from feddat_flwr.model.head import AnswerHead


def _same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _distance(a, b):
    return sum(float((a[k] - b[k]).abs().sum()) for k in a)


@pytest.fixture(params=["reference", "fast"])
def setup(request, tiny_cfg):
    cfg = tiny_cfg({"feddat.schedule": request.param})
    backbone = load_backbone_for(cfg)
    data = load_client_data(DataSpec.from_config(cfg, 0, 3), backbone.processor)
    # A global adapter with non-zero B, as after a first aggregation.
    torch.manual_seed(1)
    global_adapter = {k: torch.randn_like(v) * 0.05 for k, v in backbone.adapter_state("shared").items()}
    return cfg, backbone, data, global_adapter


def test_teacher_frozen_local_and_shared_trained_every_round(setup):
    cfg, backbone, data, g1 = setup
    shared1, _, state1 = train_client(backbone, data, None, g1, cfg, lr=0.01, server_round=1)
    assert _same(backbone.adapter_state("teacher"), g1)  # bit-identical after training
    assert _distance(state1.local, g1) > 0  # local starts from the global and is trained
    assert _distance(shared1, g1) > 0
    g2 = {k: v + 0.01 for k, v in shared1.items()}  # the "aggregate" of round 1
    shared2, _, state2 = train_client(backbone, data, state1, g2, cfg, lr=0.01, server_round=2)
    assert _same(backbone.adapter_state("teacher"), g2)
    assert _distance(state2.local, state1.local) > 0  # local keeps changing after round 1
    assert _distance(shared2, g2) > 0
    assert state2.rounds_trained == 2 and state2.labels == data.labels
    assert _distance(state2.head, state1.head) > 0


def test_shared_starts_from_the_aggregate_and_local_from_state(setup, monkeypatch):
    cfg, backbone, data, g = setup
    _, _, state = train_client(backbone, data, None, g, cfg, lr=0.01, server_round=1)
    seen = {}
    real = client_mod.train_round

    def spy(bb, head, *args, **kwargs):
        seen["shared"], seen["local"] = bb.adapter_state("shared"), bb.adapter_state("local")
        seen["head"] = {k: v.clone() for k, v in head.state_dict().items()}
        return real(bb, head, *args, **kwargs)

    monkeypatch.setattr(client_mod, "train_round", spy)
    g2 = {k: v * 2 for k, v in g.items()}
    train_client(backbone, data, state, g2, cfg, lr=0.01, server_round=2)
    assert _same(seen["shared"], g2)
    assert _same(seen["local"], state.local)
    assert _same(seen["head"], state.head)


def test_training_is_deterministic_given_the_seed_and_differs_across_seeds(tiny_cfg):
    def run(seed):
        cfg = tiny_cfg({"seed": seed})
        backbone = load_backbone_for(cfg)
        data = load_client_data(DataSpec.from_config(cfg, 0, 3), backbone.processor)
        return train_client(backbone, data, None, backbone.initial_adapter(seed), cfg, lr=0.01, server_round=1)

    a, b, other = run(7), run(7), run(8)
    assert _same(a[0], b[0]) and _same(a[2].local, b[2].local) and _same(a[2].head, b[2].head)
    assert a[1].losses == b[1].losses
    assert not _same(a[0], other[0]) and not _same(a[2].head, other[2].head)


def test_evaluation_reports_every_variant_and_changes_nothing(setup):
    cfg, backbone, data, g = setup
    _, _, state = train_client(backbone, data, None, g, cfg, lr=0.01, server_round=1)
    saved = {k: v.clone() for k, v in state.local.items()}, {k: v.clone() for k, v in state.head.items()}
    report = evaluate_client(backbone, data, state, g, cfg)
    assert set(report.accuracy) == {"dat", "shared", "local", "majority"}
    assert report.num_examples == len(data.test) and report.partition_id == 0
    # Evaluation leaves the adapters it loaded untouched (no training, no stray updates) ...
    assert _same(backbone.adapter_state("teacher"), g) and _same(backbone.adapter_state("shared"), g)
    assert _same(backbone.adapter_state("local"), state.local)
    assert _same(state.local, saved[0]) and _same(state.head, saved[1])
    # ... and a second evaluation, or training after it, sees the same model.
    assert evaluate_client(backbone, data, state, g, cfg) == report
    after_eval = train_client(backbone, data, state, g, cfg, lr=0.01, server_round=2)
    without_eval = train_client(backbone, data, state, g, cfg, lr=0.01, server_round=2)
    assert _same(after_eval[0], without_eval[0])


def test_evaluation_scores_the_trained_model_above_chance(tiny_cfg):
    cfg = tiny_cfg({"data.max-train": 96, "data.max-test": 48, "train.local-epochs": 4})
    backbone = load_backbone_for(cfg)
    data = load_client_data(DataSpec.from_config(cfg, 1, 3), backbone.processor)  # shape questions
    g = backbone.initial_adapter(cfg["seed"])
    _, _, state = train_client(backbone, data, None, g, cfg, lr=0.01, server_round=1)
    report = evaluate_client(backbone, data, state, g, cfg)
    assert report.accuracy["dat"] > 1 / len(data.labels)


def test_a_validation_fraction_replaces_the_test_split_with_held_out_training_rows(tiny_cfg):
    cfg = tiny_cfg({"data.validation-fraction": 0.25})
    data = load_client_data(DataSpec.from_config(cfg, 0, 3), load_backbone_for(cfg).processor)
    assert (len(data.train), len(data.test)) == (36, 12)  # 48 capped training rows


@pytest.mark.parametrize("kind", list(ADAPTER_KINDS))
@pytest.mark.parametrize("method", [m for m in METHODS if not METHODS[m].proxy])  # FedPFT: tests/test_fedpft.py
def test_methods_train_exactly_their_adapters(tiny_cfg, method, kind):
    cfg = tiny_cfg({"method": method, "fedprox.mu": 0.1, "adapter.kind": kind})
    spec = METHODS[method]
    backbone = load_backbone_for(cfg)
    data = load_client_data(DataSpec.from_config(cfg, 1, 3), backbone.processor)
    torch.manual_seed(2)
    g = {k: torch.randn_like(v) * 0.05 for k, v in backbone.adapter_state("shared").items()}
    shared, report, state = train_client(backbone, data, None, g, cfg, lr=0.01, server_round=1)
    assert _same(backbone.adapter_state("teacher"), g)
    assert (_distance(state.local, g) > 0) == ("local" in spec.trains)
    if spec.communicates:
        assert _distance(shared, g) > 0
    else:
        assert shared == {}  # nothing is communicated
    kd = [v for k, v in report.losses.items() if k.endswith("-kd")]
    assert kd and all((v > 0) == spec.kd for v in kd)


def test_a_method_that_communicates_nothing_starts_from_the_servers_initial_adapter(tiny_cfg):
    cfg = tiny_cfg({"method": "local-only", "seed": 5})
    backbone = load_backbone_for(cfg)
    data = load_client_data(DataSpec.from_config(cfg, 0, 3), backbone.processor)
    _, _, from_empty = train_client(backbone, data, None, {}, cfg, lr=0.01, server_round=1)
    _, _, from_initial = train_client(backbone, data, None, backbone.initial_adapter(5), cfg, lr=0.01,
                                      server_round=1)
    assert _same(from_empty.local, from_initial.local)


def test_fedprox_term_pulls_towards_the_global_adapter(tiny_cfg):
    distances = {}
    for mu in (0.0, 100.0):
        cfg = tiny_cfg({"method": "fedprox", "fedprox.mu": mu})
        backbone = load_backbone_for(cfg)
        data = load_client_data(DataSpec.from_config(cfg, 1, 3), backbone.processor)
        g = backbone.initial_adapter(cfg["seed"])
        shared, _, _ = train_client(backbone, data, None, g, cfg, lr=0.01, server_round=1)
        distances[mu] = _distance(shared, g)
    assert distances[100.0] < distances[0.0]


def test_task_views_give_clients_their_own_label_spaces(tiny_cfg):
    cfg = tiny_cfg({"preset": "task"})
    backbone = load_backbone_for(cfg)
    labels = [load_client_data(DataSpec.from_config(cfg, i, 3), backbone.processor).labels for i in range(3)]
    assert labels[1] == ["no", "yes"]  # statement verification
    assert all(" " in label for label in labels[2])  # describe: "<colour> <shape>"
    assert len(labels[0]) > 2 and labels[0] != labels[2]
    data = load_client_data(DataSpec.from_config(cfg, 1, 3), backbone.processor)
    _, report, state = train_client(backbone, data, None, backbone.initial_adapter(cfg["seed"]), cfg, lr=0.01,
                                    server_round=1)
    head = AnswerHead(backbone.hidden_size, len(data.labels))
    head.load_state_dict(state.head)
    assert head[-1].out_features == 2 and report.num_examples == len(data.train)
