"""Hand-made rounds for strategy tests: a strategy with its round book, train and evaluate
replies as clients send them, and a Grid that only knows its nodes (no Ray, no SuperLink)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from feddat_flwr.flower.round_book import RoundBook
from feddat_flwr.flower.strategy import STRATEGIES
from feddat_flwr.records import EvalReport, TrainReport, train_reply_metrics

KEYS = ("layer.lora_A.weight", "layer.lora_B.weight")


class FakeGrid:
    def __init__(self, nodes=(11, 12, 13)):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return self.nodes


def make_strategy(weighting, keys=KEYS, aggregation="fedavg", max_update_ratio=100.0, min_valid_replies=1,
                  **kw):
    defaults = dict(num_rounds=2, lr_for_round=lambda r: 0.1 / r, weighting=weighting, eval_every=1,
                    fraction_train=1.0, min_train_nodes=2, min_available_nodes=2)
    book = RoundBook(keys, max_update_ratio=max_update_ratio, min_valid_replies=min_valid_replies)
    return STRATEGIES[aggregation](book=book, **{**defaults, **kw})


def train_reply(node_id, pid, value, num_examples, arrays=None, metrics=None, evaluation=None):
    """A client's train reply: every adapter tensor filled with `value` unless `arrays` are given;
    with `evaluation` (an EvalReport), the evaluation it ran first."""
    sent = Message(content=RecordDict(), dst_node_id=node_id, message_type="train")
    if arrays is None:
        arrays = {k: np.full((2, 2), value, dtype=np.float32) for k in KEYS}
    report = TrainReport(partition_id=pid, num_examples=num_examples, losses={"loss": value},
                         seconds=float(pid + 1), steps=1, peak_rss_mb=1.0)
    arrays = {k: Array(v) for k, v in arrays.items()}
    content = RecordDict({"arrays": ArrayRecord(arrays),
                          "metrics": MetricRecord({**train_reply_metrics(report, evaluation), **(metrics or {})})})
    return Message(content, reply_to=sent)


def eval_reply(node_id, pid, acc, n):
    sent = Message(content=RecordDict(), dst_node_id=node_id, message_type="evaluate")
    report = EvalReport(pid, n, {"dat": acc, "shared": acc / 2, "local": acc / 4, "majority": 0.1})
    return Message(RecordDict({"metrics": MetricRecord(report.to_metrics())}), reply_to=sent)


def zeros(keys=KEYS):
    return ArrayRecord({k: Array(np.zeros((2, 2), dtype=np.float32)) for k in keys})


def begin_round(strategy, server_round=1, grid=None, runner=None):
    """configure_train of `runner` (default: the strategy itself), the messages shown to the book."""
    arrays = zeros()
    msgs = list((runner or strategy).configure_train(server_round, arrays, ConfigRecord(), grid or FakeGrid()))
    strategy.book.sent(msgs)  # as the Grid does
    return arrays, msgs


def train(strategy, server_round, replies, runner=None):
    return (runner or strategy).aggregate_train(server_round, strategy.book.received(replies))
