"""Whole rounds in one process: the strategy's messages handled by the real ClientApp handlers,
their replies checked by the round book and aggregated (no Ray, no SuperLink)."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

import client_app
from feddat_flwr.config import load_config
from feddat_flwr.flower.round_book import RoundBook
from feddat_flwr.flower.strategy import FedDAT
from feddat_flwr.model.backbone import load_backbone_for
from feddat_flwr.packing import pack


class NodesGrid:
    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return self.nodes


def strategy_and_initial(run_config: dict, num_rounds: int, num_nodes: int) -> tuple[FedDAT, dict]:
    """The FedDAT strategy of a run and its initial adapter (from the run's own backbone)."""
    cfg = load_config(run_config)
    initial = load_backbone_for(cfg, device="cpu").initial_adapter(cfg["seed"])
    strategy = FedDAT(book=RoundBook(pack(initial), max_update_ratio=100.0, min_valid_replies=1),
                      num_rounds=num_rounds, lr_for_round=lambda r: 0.01, weighting="num-examples", eval_every=1,
                      fraction_train=1.0, min_train_nodes=num_nodes, min_available_nodes=num_nodes)
    return strategy, initial


def run_rounds(strategy: FedDAT, run_config: dict, initial: dict, nodes: list[int], num_rounds: int,
               on_train=None) -> tuple[ArrayRecord, dict[int, Context]]:
    """`num_rounds` rounds over `nodes` (node i holds partition i of 3); (the last aggregate, the
    nodes' contexts). `on_train(round, messages, replies)` sees each round's train exchange."""
    contexts = {n: Context(run_id=1, node_id=n, node_config={"partition-id": i, "num-partitions": 3},
                           state=RecordDict(), run_config=run_config) for i, n in enumerate(nodes)}
    grid, arrays = NodesGrid(nodes), ArrayRecord(pack(initial))
    for server_round in range(1, num_rounds + 1):
        train = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        strategy.book.sent(train)
        replies = strategy.book.received([client_app.train(m, contexts[m.metadata.dst_node_id]) for m in train])
        if on_train is not None:
            on_train(server_round, train, replies)
        arrays, _ = strategy.aggregate_train(server_round, replies)
        evaluate = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
        strategy.book.sent(evaluate)
        strategy.aggregate_evaluate(server_round, strategy.book.received(
            [client_app.evaluate(m, contexts[m.metadata.dst_node_id]) for m in evaluate]))
    return arrays, contexts
