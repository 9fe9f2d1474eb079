"""FedDAT server strategy: FedAvg over the shared adapter only, with per-round records.

Only the `shared` adapter travels: the server sends it (fp32) and aggregates it; a reply whose
arrays are not exactly the shared adapter's tensors is rejected and recorded as a failure.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

# weighting name -> metric key every client reply carries
WEIGHT_KEYS = {"num-examples": "num-examples", "uniform": "unit-weight"}
EVAL_VARIANTS = ("dat", "shared", "local", "majority")
TRAIN_KEYS = ("train-loss", "train-student-task", "train-student-kd", "train-dat-task", "train-dat-kd",
              "train-seconds", "train-samples-per-s", "train-steps", "peak-rss-mb", "peak-cuda-mb")


def summarize(per_client: dict[str, dict], weight_key: str = "num-examples") -> dict[str, dict[str, float]]:
    """Per variant: mean over clients weighted by their test size, and the worst client."""
    weights = {cid: c[weight_key] for cid, c in per_client.items()}
    total = sum(weights.values()) or 1
    return {
        v: {
            "mean": sum(c[v] * weights[cid] for cid, c in per_client.items()) / total,
            "min": min(c[v] for c in per_client.values()),
        }
        for v in EVAL_VARIANTS
    }


class FedDAT(FedAvg):
    """FedAvg of the shared adapter, client evaluation every `eval_every` rounds and at the end."""

    def __init__(
        self,
        *,
        adapter_keys: Iterable[str],
        num_rounds: int,
        lr_for_round: Callable[[int], float],
        weighting: str = "num-examples",
        eval_every: int = 1,
        fraction_train: float = 1.0,
        min_train_nodes: int = 2,
        min_available_nodes: int = 2,
        on_round_end: Callable[[dict], None] | None = None,
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
        )
        self.adapter_keys = frozenset(adapter_keys)
        self.num_rounds = num_rounds
        self.lr_for_round = lr_for_round
        self.eval_every = eval_every
        self.on_round_end = on_round_end
        self.history: list[dict] = []
        self._round: dict = {}

    # -- helpers ------------------------------------------------------------------------
    def _client(self, msg: Message) -> dict:
        pid = str(int(msg.content["metrics"]["partition-id"]))
        return self._round["clients"].setdefault(pid, {"node-id": msg.metadata.src_node_id})

    def _split_replies(self, replies: Iterable[Message], stage: str, check_arrays: bool) -> list[Message]:
        """Valid replies; errors and replies carrying anything but the shared adapter are recorded."""
        valid = []
        for msg in replies:
            reason = msg.error.reason if msg.has_error() else None
            if reason is None and check_arrays:
                records = list(msg.content.array_records.values())
                keys = set(records[0].keys()) if len(records) == 1 else set()
                if keys != self.adapter_keys:
                    extra = sorted(keys - self.adapter_keys)[:3]
                    reason = f"reply arrays are not exactly the shared adapter (extra keys {extra})"
                else:
                    self._round["bytes-up"] += records[0].count_bytes()
            if reason is None:
                valid.append(msg)
            else:
                node = self._destination_of(msg)
                log(WARNING, "Round %s %s: node %s failed: %s", self._round["round"], stage, node, reason)
                self._round["failures"].append({"node-id": node, "stage": stage, "reason": reason})
        return valid

    def _destination_of(self, reply: Message) -> int:
        """The node a reply answers for (an error reply about a lost node comes from the SuperLink)."""
        reply_to = reply.metadata.reply_to_message_id
        for sent in self._round.get("_sent", []) if reply_to else []:
            if reply_to in (sent.metadata.message_id, sent.object_id):
                return sent.metadata.dst_node_id
        return reply.metadata.src_node_id

    def _is_eval_round(self, server_round: int) -> bool:
        return server_round % self.eval_every == 0 or server_round == self.num_rounds

    # -- Strategy hooks -----------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        lr = self.lr_for_round(server_round)
        self._round = {"round": server_round, "lr": lr, "clients": {}, "bytes-up": 0, "bytes-down": 0,
                       "failures": [], "_start": time.perf_counter()}
        config = ConfigRecord({**config, "lr": lr})
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._round["bytes-down"] += arrays.count_bytes() * len(messages)
        self._round["_sent"] = messages
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        valid = self._split_replies(replies, "train", check_arrays=True)
        for msg in valid:
            metrics = msg.content["metrics"]
            client = self._client(msg)
            client["num-examples"] = int(metrics["num-examples"])
            client["train"] = {k.removeprefix("train-"): float(metrics[k]) for k in TRAIN_KEYS if k in metrics}
        return super().aggregate_train(server_round, valid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if not self._is_eval_round(server_round):
            return []
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self._round["bytes-down"] += arrays.count_bytes() * len(messages)
        self._round["_sent"] = self._round.get("_sent", []) + messages
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        valid = self._split_replies(replies, "evaluate", check_arrays=False)
        evals = {}
        for msg in valid:
            metrics = msg.content["metrics"]
            record = {v: float(metrics[f"eval-{v}"]) for v in EVAL_VARIANTS}
            record["num-examples"] = int(metrics["num-examples"])
            self._client(msg)["eval"] = record
            evals[str(int(metrics["partition-id"]))] = record
        if not evals:
            return None
        self._round["eval"] = summarize(evals)
        return MetricRecord({f"{v}-mean": s["mean"] for v, s in self._round["eval"].items()})

    def end_of_round(self, server_round: int, arrays: ArrayRecord) -> None:
        """Close the round's record (used as Strategy.start's evaluate_fn, called after each round)."""
        if server_round == 0:
            return None
        record = self._round
        record["seconds"] = time.perf_counter() - record.pop("_start")
        record.pop("_sent", None)
        train_seconds = [c["train"]["seconds"] for c in record["clients"].values() if "train" in c]
        record["straggler-seconds"] = (max(train_seconds) - statistics.median(train_seconds)
                                       if train_seconds else 0.0)
        record["clients"] = dict(sorted(record["clients"].items(), key=lambda kv: int(kv[0])))
        self.history.append(record)
        log(INFO, "%s", round_line(record, self.num_rounds))
        if self.on_round_end is not None:
            self.on_round_end(record)
        return None


def round_line(record: dict, num_rounds: int) -> str:
    """The per-round headline: accuracies (mean/min), mean train loss, time, traffic."""
    parts = [f"round {record['round']}/{num_rounds}"]
    if "eval" in record:
        parts += [f"{v} {s['mean']:.3f} (min {s['min']:.3f})" for v, s in record["eval"].items()]
    losses = [c["train"]["loss"] for c in record["clients"].values() if "train" in c]
    if losses:
        parts.append(f"loss {statistics.fmean(losses):.3f}")
    parts.append(f"{record['seconds']:.1f} s")
    parts.append(f"{(record['bytes-up'] + record['bytes-down']) / 1e6:.2f} MB")
    if record["failures"]:
        parts.append(f"{len(record['failures'])} failures")
    return " | ".join(parts)
