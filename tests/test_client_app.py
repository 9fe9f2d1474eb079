"""The Flower ClientApp handlers called directly with a Context, as Flower calls them."""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

import client_app
from feddat_flwr.model.backbone import load_backbone_for
from feddat_flwr.packing import PACKED_KEY, pack, unpack
from feddat_flwr.flower.state import LOCAL_KEY, mirror_dir, read_state, restore_state
from feddat_flwr.records import EVALUATE_FIRST, RUN_KEY, EvalReport, TrainReport


@pytest.fixture()
def context(tiny_cfg, tiny_model_dir, task_identity):
    run_config = {"model.name-or-path": tiny_model_dir, "data.max-train": 48, "data.max-test": 24,
                  "train.batch-size": 16}
    return Context(run_id=1, node_id=5, node_config={"partition-id": 1, "num-partitions": 3},
                   state=RecordDict(), run_config=run_config)


def _message(kind, adapter, server_round, **config):
    """A message as the server sends it: the adapter packed."""
    content = RecordDict({"arrays": ArrayRecord(pack(adapter)),
                          "config": ConfigRecord({"lr": 0.01, "server-round": server_round, **config})})
    return Message(content=content, dst_node_id=5, message_type=kind)


def _adapter(reply, layout):
    """The shared adapter a train reply carries, unpacked."""
    return unpack(reply.content["arrays"].to_torch_state_dict(), layout)


def _fresh(context):
    return Context(run_id=1, node_id=5, node_config=dict(context.node_config), state=RecordDict(),
                   run_config=context.run_config)


def test_one_message_per_round_reports_what_the_two_message_flow_did(context, tiny_cfg):
    """Round 2's train message with evaluate-first: its reply's evaluation equals the evaluate
    message of the two-message flow after round 1, and its training is bit-identical."""
    global0 = load_backbone_for(tiny_cfg()).initial_adapter(0)
    two, one = context, _fresh(context)
    global1 = _adapter(client_app.train(_message("train", global0, 1), two), global0)
    evaluation = client_app.evaluate(_message("evaluate", global1, 1), two).content["metrics"]
    trained = client_app.train(_message("train", global1, 2), two)

    first = _adapter(client_app.train(_message("train", global0, 1), one), global0)
    assert all(torch.equal(first[k], global1[k]) for k in global1)
    combined = client_app.train(_message("train", global1, 2, **{EVALUATE_FIRST: True}), one)
    metrics = combined.content["metrics"]
    assert EvalReport.from_metrics(metrics) == EvalReport.from_metrics(evaluation)
    assert TrainReport.from_metrics(metrics).num_examples == TrainReport.from_metrics(trained.content["metrics"]).num_examples
    assert metrics["num-examples"] == 48  # FedAvg weights by the training size, not the test size
    arrays, expected = _adapter(combined, global0), _adapter(trained, global0)
    assert all(torch.equal(arrays[k], expected[k]) for k in expected)
    assert read_state(one.state).rounds_trained == read_state(two.state).rounds_trained == 2


def test_only_the_shared_adapter_leaves_and_private_state_persists(context, tiny_cfg):
    backbone = load_backbone_for(tiny_cfg())
    global_adapter = backbone.initial_adapter(0)
    reply = client_app.train(_message("train", global_adapter, 1), context)

    assert set(reply.content.keys()) == {"arrays", "metrics"}
    sent = reply.content["arrays"]
    assert set(sent.keys()) == {PACKED_KEY} and sent[PACKED_KEY].dtype == "float32"
    # exactly the shared adapter's tensors, packed
    assert sent[PACKED_KEY].numpy().size == sum(v.numel() for v in global_adapter.values())
    assert set(_adapter(reply, global_adapter)) == set(global_adapter)
    assert reply.content["metrics"]["partition-id"] == 1

    state1 = read_state(context.state)
    assert state1 is not None and state1.rounds_trained == 1
    local1 = {k: v.clone() for k, v in state1.local.items()}

    # The same node (same Context) in round 2: the local adapter continues from its state.
    reply2 = client_app.train(_message("train", _adapter(reply, global_adapter), 2), context)
    state2 = read_state(context.state)
    assert state2.rounds_trained == 2
    assert any(not torch.equal(local1[k], state2.local[k]) for k in local1)
    assert LOCAL_KEY in context.state and set(_adapter(reply2, global_adapter)) == set(global_adapter)

    evaluation = client_app.evaluate(_message("evaluate", _adapter(reply2, global_adapter), 2), context)
    metrics = evaluation.content["metrics"]
    assert {"eval-dat", "eval-shared", "eval-local", "eval-majority"} <= set(metrics.keys())
    assert evaluation.content.array_records == {}  # evaluation sends no tensors back


def test_bad_partition_id_is_a_clear_error(context):
    context.node_config["partition-id"] = 3
    with pytest.raises(ValueError, match=r"partition-id 3 is outside \[0, 3\)"):
        client_app.train(_message("train", {}, 1), context)


def test_state_is_mirrored_per_round_and_restored_after_a_restart(context, tiny_cfg, tmp_path):
    context.node_config["state-dir"] = str(tmp_path / "node-state")
    global_adapter = load_backbone_for(tiny_cfg()).initial_adapter(0)
    key = {RUN_KEY: "key-a"}
    client_app.train(_message("train", global_adapter, 1, **key), context)
    mirror = mirror_dir(context.node_config, "key-a")
    assert mirror == tmp_path / "node-state" / "run-key-a"
    assert sorted(p.name for p in (mirror / "round-1").iterdir()) == ["head.safetensors",
                                                                     "local-adapter.safetensors", "meta.json"]
    before = read_state(context.state)
    # A restarted SuperNode: same node config, empty context.state.
    restarted = _fresh(context)
    restored = restore_state(restarted.state, mirror, before_round=2)
    assert restored.rounds_trained == 1 and restored.last_round == 1 and restored.labels == before.labels
    assert all(torch.equal(restored.local[k], before.local[k]) for k in before.local)
    assert all(torch.equal(restored.head[k], before.head[k]) for k in before.head)
    client_app.train(_message("train", global_adapter, 2, **key), restarted)
    assert read_state(restarted.state).rounds_trained == 2  # continued, not re-initialised
    client_app.train(_message("train", global_adapter, 3, **key), restarted)
    assert sorted(p.name for p in mirror.iterdir()) == ["round-2", "round-3"]  # the newest two
    # A run resumed from the server's checkpoint of round 2 re-sends round 3: the client starts
    # from its state after round 2, although it had trained round 3 already.
    assert restore_state(RecordDict(), mirror, before_round=3).last_round == 2
    assert restore_state(RecordDict(), mirror_dir(context.node_config, "key-b"), before_round=2) is None
