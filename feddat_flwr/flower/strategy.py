"""The server strategy: FedAvg over the shared adapter only, with a round book and eval-every.

Only the `shared` adapter travels: the server sends it (fp32) and aggregates it with FedAvg's own
`aggregate_train` (unmodified, as Flower's DP wrappers require), or, with `strategy.aggregation`,
with Flower's FedMedian, FedTrimmedAvg or Krum (`strategy_for`). Replies are checked and recorded
on their way in by the round's `RoundBook` (see round_book.py), which the Grid shows them to.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from feddat_flwr.flower.proxy_rounds import ProxyRounds
from feddat_flwr.flower.round_book import RoundBook
from feddat_flwr.records import (
    EVALUATE_FIRST,
    RUN_KEY,
    VARIANTS,
    WEIGHT_KEYS,
    EvalReport,
    PrivacyRecord,
    RoundRecord,
    TrainReport,
)

# A round's privacy account, given the clipping norm of the round and its record (see privacy.py).
PrivacyAccount = Callable[[float, RoundRecord], PrivacyRecord]


def mean_train_loss(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """The round's aggregated train metric: the clients' mean loss (what Flower logs)."""
    return MetricRecord({"loss": statistics.fmean(TrainReport.from_metrics(c["metrics"]).losses["loss"]
                                                  for c in contents)})


def mean_accuracy(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """The round's aggregated evaluation: each variant's accuracy, weighted by test size."""
    reports = [EvalReport.from_metrics(c["metrics"]) for c in contents]
    total = sum(r.num_examples for r in reports) or 1
    return MetricRecord({v: sum(r.accuracy[v] * r.num_examples for r in reports) / total for v in VARIANTS})


class FedDAT(FedAvg):
    """FedAvg of the shared adapter; client evaluation every `eval_every` rounds and at the end."""

    def __init__(
        self,
        *,
        book: RoundBook,
        num_rounds: int,
        lr_for_round: Callable[[int], float],
        weighting: str,
        eval_every: int,
        fraction_train: float,
        min_train_nodes: int,
        min_available_nodes: int,
        on_round_end: Callable[[RoundRecord], None] | None = None,
        on_aggregated: Callable[[int], None] | None = None,
        run_key: str = "",
        **aggregation_options,
    ):
        if weighting not in WEIGHT_KEYS:
            raise ValueError(f"Unknown weighting {weighting!r}; allowed: {', '.join(WEIGHT_KEYS)}.")
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=1.0,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_train_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=WEIGHT_KEYS[weighting],
            train_metrics_aggr_fn=mean_train_loss,
            evaluate_metrics_aggr_fn=mean_accuracy,
            **aggregation_options,
        )
        self.book = book
        self.num_rounds = num_rounds
        self.lr_for_round = lr_for_round
        self.eval_every = eval_every
        self.on_round_end = on_round_end
        self.on_aggregated = on_aggregated  # called with each aggregated round (the checkpoint)
        self.run_key = run_key
        self.offset = 0  # rounds done before this ServerApp started (a resumed run)
        self.history: list[RoundRecord] = []
        self.privacy_account: PrivacyAccount | None = None  # set when a DP wrapper drives this strategy
        self.latest_arrays: ArrayRecord | None = None  # the global adapter of the round in progress
        self.proxy_rounds: ProxyRounds | None = None  # FedPFT's part of the rounds: see `use_proxy_rounds`
        self._clipping_norm = 0.0

    def use_proxy_rounds(self, proxy_rounds: ProxyRounds) -> None:
        """FedPFT (method fedpft-proxy): its rounds see every valid reply and run their alignment at
        the end of each round, before the checkpoint."""
        self.proxy_rounds = proxy_rounds
        self.book.on_valid = proxy_rounds.received

    def is_eval_round(self, server_round: int) -> bool:
        return server_round % self.eval_every == 0 or server_round == self.num_rounds

    def resume(self, rounds_done: int, held: RoundRecord | None, held_seconds: float) -> None:
        """Continue a run after its round `rounds_done`: Flower's round 1 is round rounds_done + 1."""
        self.offset = rounds_done
        self.book.held, self.book.held_seconds = held, held_seconds

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        lr = self.lr_for_round(server_round)
        self.book.begin(server_round, lr)
        self.latest_arrays = arrays
        self._clipping_norm = float(config.get(KEY_CLIPPING_NORM, 0.0))  # set by a DP wrapper
        evaluate_first = server_round > 1 and self.is_eval_round(server_round - 1)
        config = ConfigRecord({**config, "lr": lr, EVALUATE_FIRST: evaluate_first, RUN_KEY: self.run_key})
        if self.proxy_rounds is None:
            return super().configure_train(server_round, arrays, config, grid)
        config = ConfigRecord({**config, **self.proxy_rounds.train_config(server_round)})
        return self.proxy_rounds.with_layers(super().configure_train(server_round, arrays, config, grid))


    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        self.latest_arrays = arrays  # this round's aggregate
        if server_round != self.num_rounds:  # earlier aggregates are evaluated with the next train message
            return []
        return super().configure_evaluate(server_round, arrays, ConfigRecord({**config, RUN_KEY: self.run_key}),
                                          grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Flower calls this at the end of every round (with replies in the last round only): the
        previous round's record, now evaluated, is closed; this round's is held for the
        evaluations the next round's train replies bring, or closed if it is the last."""
        server_round += self.offset
        metrics = super().aggregate_evaluate(server_round, replies)
        if self.proxy_rounds is not None:
            self.proxy_rounds.round_ended(server_round, self.latest_arrays)
        self.close_held()
        if self.privacy_account is not None:  # the account as of this round's release
            self.book.current.privacy = self.privacy_account(self._clipping_norm, self.book.current)
        if server_round == self.num_rounds:
            self._finish(self.book.close())
        else:
            self.book.hold()
            if self.on_aggregated is not None:
                self.on_aggregated(server_round)
        return metrics

    def close_held(self) -> None:
        """The held round's record, with the evaluations it has, is closed (at the end of the next
        round, or when a run stops early)."""
        previous = self.book.close_held()
        if previous is not None:
            self._finish(previous)

    def evaluate_held(self, grid: Grid) -> None:
        """A run that stops before its last round: the held round's aggregate (the last one
        released) is evaluated with evaluate messages, as a last round's is, and its record closed."""
        if self.book.held is None:
            return
        self.book.reopen_held()
        server_round = self.book.current.round
        messages = super().configure_evaluate(server_round, self.latest_arrays,
                                              ConfigRecord({RUN_KEY: self.run_key}), grid)
        super().aggregate_evaluate(server_round, grid.send_and_receive(messages))
        self._finish(self.book.close())

    def _finish(self, record: RoundRecord) -> None:
        self.history.append(record)
        log(INFO, "%s", record.headline(self.num_rounds))
        if self.on_round_end is not None:
            self.on_round_end(record)


class FedDATMedian(FedDAT, FedMedian):
    """FedDAT with Flower's coordinate-wise median of the shared adapters."""


class FedDATTrimmedMean(FedDAT, FedTrimmedAvg):
    """FedDAT with Flower's trimmed mean (`beta` = strategy.trim-fraction from each tail)."""


class FedDATKrum(FedDAT, Krum):
    """FedDAT with Flower's Krum (`num_malicious_nodes` = strategy.krum-malicious)."""


# strategy.aggregation -> its strategy class (the names are feddat_flwr.robustness.AGGREGATIONS)
STRATEGIES: dict[str, type[FedDAT]] = {
    "fedavg": FedDAT, "median": FedDATMedian, "trimmed-mean": FedDATTrimmedMean, "krum": FedDATKrum}


def strategy_for(strategy_cfg, **kwargs) -> FedDAT:
    """The FedDAT strategy whose aggregation `strategy_cfg` (the config's strategy section) names."""
    name = strategy_cfg["aggregation"]
    options = {"trimmed-mean": {"beta": strategy_cfg["trim-fraction"]},
               "krum": {"num_malicious_nodes": strategy_cfg["krum-malicious"]}}.get(name, {})
    return STRATEGIES[name](**kwargs, **options)
