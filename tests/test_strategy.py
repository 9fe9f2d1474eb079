"""The FedDAT strategy and its round book with hand-made replies (no Ray, no SuperLink)."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from feddat_flwr.flower.strategy import FedDAT
from feddat_flwr.records import EVALUATE_FIRST, EvalReport, summarize
from helpers.replies import KEYS, FakeGrid, begin_round, eval_reply, make_strategy, train, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")


def test_aggregation_is_fedavgs_own():
    assert FedDAT.aggregate_train is FedAvg.aggregate_train  # Flower's DP accountant requires it


@pytest.mark.parametrize(("weighting", "expected"), [("num-examples", (1 * 10 + 4 * 30) / 40), ("uniform", 2.5)])
def test_aggregates_shared_adapter_by_weighting(weighting, expected):
    strategy = make_strategy(weighting)
    begin_round(strategy)
    arrays, metrics = train(strategy, 1, [train_reply(11, 0, 1.0, 10), train_reply(12, 1, 4.0, 30)])
    for key in KEYS:
        np.testing.assert_allclose(arrays[key].numpy(), np.full((2, 2), expected), rtol=1e-6)
    assert dict(metrics) == {"loss": 2.5}  # what Flower logs: the clients' mean loss, nothing else


def test_train_config_carries_round_lr_and_only_the_adapter():
    strategy = make_strategy("num-examples")
    arrays, msgs = begin_round(strategy, server_round=2)
    assert len(msgs) == 3
    assert msgs[0].content["config"]["lr"] == pytest.approx(0.05)
    assert set(msgs[0].content["arrays"].keys()) == set(KEYS)
    assert strategy.book.current.bytes_down == 3 * arrays.count_bytes()


def test_reply_with_private_tensors_is_rejected_and_recorded():
    strategy = make_strategy("uniform")
    leaky = {**{k: np.ones((2, 2), np.float32) for k in KEYS}, "head.weight": np.ones(3, np.float32)}
    _, sent = begin_round(strategy)
    for i, m in enumerate(sent):
        m.metadata.__dict__["_message_id"] = f"msg-{i}"  # as the Grid does when it sends them
    lost = next(m for m in sent if m.metadata.dst_node_id == 13)
    TaskIdentity.node_id = 1  # the SuperLink answers for a node that went away
    replies = [train_reply(11, 0, 1.0, 10), train_reply(12, 1, 9.0, 10, arrays=leaky),
               Message(Error(code=0, reason="node crashed"), reply_to=lost)]
    arrays, _ = train(strategy, 1, replies)
    np.testing.assert_allclose(arrays[KEYS[0]].numpy(), 1.0)  # only the clean reply counted
    failures = strategy.book.current.failures
    assert [(f.node_id, f.stage) for f in failures] == [(12, "train"), (13, "train")]
    assert "head.weight" in failures[0].reason and failures[1].reason == "node crashed"


def test_reply_with_malformed_metrics_is_a_recorded_failure():
    strategy = make_strategy("uniform")
    begin_round(strategy)
    bad = train_reply(12, 1, 1.0, 10)
    del bad.content["metrics"]["partition-id"]
    valid = strategy.book.received([train_reply(11, 0, 1.0, 10), bad])
    assert len(valid) == 1 and "partition-id" in strategy.book.current.failures[0].reason


def test_round_record_has_per_client_train_eval_and_summary():
    records = []
    strategy = make_strategy("num-examples", eval_every=2, on_round_end=records.append)
    arrays, _ = begin_round(strategy, 1)
    train(strategy, 1, [train_reply(11, 0, 1.0, 10), train_reply(12, 1, 2.0, 30)])
    assert list(strategy.configure_evaluate(1, arrays, ConfigRecord(), FakeGrid())) == []  # not an eval round
    assert strategy.aggregate_evaluate(1, []) is None
    arrays, _ = begin_round(strategy, 2)
    train(strategy, 2, [train_reply(11, 0, 1.0, 10), train_reply(12, 1, 2.0, 30)])
    evaluate = list(strategy.configure_evaluate(2, arrays, ConfigRecord(), FakeGrid()))
    assert len(evaluate) == 3  # the last round is always evaluated
    strategy.book.sent(evaluate)
    replies = strategy.book.received([eval_reply(11, 0, 0.8, 100), eval_reply(12, 1, 0.4, 300)])
    metrics = strategy.aggregate_evaluate(2, replies)
    assert metrics["dat"] == pytest.approx((0.8 * 100 + 0.4 * 300) / 400)
    assert [r.round for r in records] == [1, 2] and records[0].eval is None
    last = records[1]
    assert set(last.clients) == {"0", "1"}
    assert last.clients["1"].train["loss"] == 2.0 and last.clients["1"].num_examples == 30
    assert last.clients["0"].eval["dat"] == 0.8
    assert last.eval["dat"]["mean"] == pytest.approx((0.8 * 100 + 0.4 * 300) / 400)
    assert last.eval["dat"]["min"] == pytest.approx(0.4)
    assert last.bytes_up > 0 and last.bytes_down > 0 and last.seconds >= 0
    assert last.straggler_seconds == pytest.approx(2.0 - 1.5)
    assert strategy.history == records


def test_summarize_mean_is_weighted_and_min_is_worst_client():
    s = summarize({"0": {"dat": 1.0, "shared": 0.5, "local": 0.0, "majority": 0.2, "num-examples": 1},
                   "1": {"dat": 0.0, "shared": 0.5, "local": 1.0, "majority": 0.2, "num-examples": 3}})
    assert s["dat"] == {"mean": 0.25, "min": 0.0}
    assert s["local"]["mean"] == 0.75


def test_unknown_weighting_is_an_error():
    with pytest.raises(ValueError, match="Unknown weighting 'size'; allowed: num-examples, uniform"):
        make_strategy("size")


def test_no_communication_mode_exchanges_no_bytes():
    strategy = make_strategy("num-examples", keys=(), num_rounds=1)
    empty = ArrayRecord()
    msgs = list(strategy.configure_train(1, empty, ConfigRecord(), FakeGrid()))
    strategy.book.sent(msgs)
    arrays, _ = train(strategy, 1, [train_reply(11, 0, 1.0, 10, arrays={}), train_reply(12, 1, 2.0, 10, arrays={})])
    assert len(msgs) == 3 and len(arrays) == 0
    assert strategy.book.current.bytes_down == 0 and strategy.book.current.failures == []


def test_one_message_per_round_the_next_train_reply_brings_the_evaluation():
    """Round 2's train messages ask for the evaluation of round 1's aggregate; the train replies
    that bring it fill round 1's record; only the last round has evaluate messages. Each round
    sends every client one adapter (the last also its final evaluation's)."""
    records = []
    strategy = make_strategy("uniform", num_rounds=2, on_round_end=records.append)
    arrays, msgs = begin_round(strategy, 1)
    assert all(m.content["config"][EVALUATE_FIRST] is False for m in msgs)
    train(strategy, 1, [train_reply(11, 0, 1.0, 10), train_reply(12, 1, 2.0, 10)])
    assert list(strategy.configure_evaluate(1, arrays, ConfigRecord(), FakeGrid())) == []
    strategy.aggregate_evaluate(1, [])
    assert records == []  # round 1 waits for its evaluation
    arrays, msgs = begin_round(strategy, 2)
    assert all(m.content["config"][EVALUATE_FIRST] is True for m in msgs)
    accuracies = [{"dat": acc, "shared": acc, "local": acc, "majority": 0.1} for acc in (0.6, 0.8)]
    train(strategy, 2, [train_reply(11 + i, i, 1.0, 10, evaluation=EvalReport(i, 20, a))
                        for i, a in enumerate(accuracies)])
    final = list(strategy.configure_evaluate(2, arrays, ConfigRecord(), FakeGrid()))
    strategy.book.sent(final)
    strategy.aggregate_evaluate(2, strategy.book.received([eval_reply(11, 0, 0.9, 20), eval_reply(12, 1, 0.7, 20)]))
    first, second = records
    assert first.round == 1 and first.eval["dat"]["mean"] == pytest.approx(0.7)
    assert first.clients["1"].eval["dat"] == 0.8 and first.clients["1"].num_examples == 10
    assert second.eval["dat"]["mean"] == pytest.approx(0.8)
    adapter = arrays.count_bytes()
    assert first.bytes_down == 3 * adapter and second.bytes_down == 2 * 3 * adapter
