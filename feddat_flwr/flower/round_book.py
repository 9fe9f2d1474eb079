"""The server's book of a round: what was sent, what came back, what failed.

The Grid (feddat_flwr.flower.prompt_grid) shows the book every message it sends and every reply
it receives. The book counts the bytes, checks every reply before anything aggregates it (error
replies, malformed metrics, and the shared adapter against what was sent: the same tensor names,
shapes and dtypes, finite values, an update norm in line with the round's others; see
feddat_flwr.robustness), records each valid client's reports and drops the others, recording why
and for which node. So the strategy aggregates valid replies only, with Flower's own unmodified
`aggregate_train`. A round left with fewer valid train replies than `min_valid_replies` stops
the run (`TooFewValidReplies`).

One message per client and round: a train reply may also carry the client's evaluation of the
aggregate it received, which is the previous round's evaluation after aggregation. So a round's
record is held (`hold`) until the next round's train replies have brought its evaluations
(`close_held`); the last round's comes with the final evaluate messages (`close`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import WARNING

import numpy as np
from flwr.app import Message, MessageType
from flwr.common.logger import log

from feddat_flwr.records import ARRAYS_KEY, PARTITION_ID, EvalReport, Failure, RoundRecord, TrainReport
from feddat_flwr.robustness import norm_outliers, update_norm, update_problem


class TooFewValidReplies(RuntimeError):
    """A round has fewer valid train replies than `strategy.min-valid-replies`."""


def _arrays(msg: Message) -> dict[str, np.ndarray]:
    """A message's shared adapter (its ArrayRecord `arrays`) as numpy arrays (empty if it has none)."""
    record = msg.content.array_records.get(ARRAYS_KEY)
    return {k: a.numpy() for k, a in record.items()} if record is not None else {}


class RoundBook:
    def __init__(self, adapter_keys: Iterable[str], *, max_update_ratio: float, min_valid_replies: int):
        self.adapter_keys = frozenset(adapter_keys)
        self.max_update_ratio = max_update_ratio
        self.min_valid_replies = min_valid_replies
        self.current: RoundRecord | None = None
        self.held: RoundRecord | None = None  # the previous round, awaiting its evaluations
        self.held_seconds = 0.0
        self._sent: list[Message] = []
        self._global: dict[str, np.ndarray] = {}
        self._phase: str | None = None  # the message type of the batch last sent
        self._start = 0.0
        # Called with each batch of valid replies (FedPFT's rounds read their counts and versions).
        self.on_valid: Callable[[list[Message]], None] | None = None

    def begin(self, server_round: int, lr: float) -> None:
        self.current = RoundRecord(round=server_round, lr=lr)
        self._sent = []
        self._global = {}
        self._start = time.perf_counter()

    def close(self) -> RoundRecord:
        """The current round's finished record."""
        record, self.current = self.current, None
        record.close(time.perf_counter() - self._start)
        return record

    def hold(self) -> None:
        """The current round is aggregated; its evaluations come with the next round's replies."""
        self.held, self.current = self.current, None
        self.held_seconds = time.perf_counter() - self._start

    def reopen_held(self) -> None:
        """The held round becomes the current one again (to be evaluated by evaluate messages)."""
        self.current, self.held = self.held, None
        self._sent = []
        self._start = time.perf_counter() - self.held_seconds

    def close_held(self) -> RoundRecord | None:
        """The held round's finished record (None if no round is held)."""
        record, self.held = self.held, None
        if record is not None:
            record.close(self.held_seconds)
        return record

    # -- the Grid's view --------------------------------------------------------------------
    def sent(self, messages: list[Message]) -> None:
        self._sent += messages
        self._phase = messages[0].metadata.message_type if messages else None
        for msg in messages:
            self.current.bytes_down += sum(a.count_bytes() for a in msg.content.array_records.values())
            if msg.metadata.message_type == MessageType.TRAIN and not self._global:
                self._global = _arrays(msg)

    def received(self, replies: Iterable[Message]) -> list[Message]:
        """The valid replies, each recorded; the others are recorded as failures."""
        replies = list(replies)
        problems = {id(m): m.error.reason if m.has_error() else self._problem(m) for m in replies}
        updates = [m for m in replies if problems[id(m)] is None and m.metadata.message_type == MessageType.TRAIN
                   and self._global]
        norms = [update_norm(self._global, _arrays(m)) for m in updates]
        for msg, outlier in zip(updates, norm_outliers(norms, self.max_update_ratio)):
            problems[id(msg)] = outlier
        norm_of = {id(m): n for m, n in zip(updates, norms)}
        valid = []
        for msg in replies:
            reason = problems[id(msg)]
            if reason is None:
                self._record_reports(msg, norm_of.get(id(msg)))
                valid.append(msg)
            else:
                node = self._destination_of(msg)
                stage = msg.metadata.message_type
                log(WARNING, "Round %s %s: node %s failed: %s", self.current.round, stage, node, reason)
                self.current.failures.append(Failure(node, stage, reason))
        # In partition order: the aggregate is then the same sum, bit for bit, whatever the order
        # replies arrived in (a resumed run reproduces an uninterrupted one).
        valid.sort(key=lambda m: int(m.content["metrics"][PARTITION_ID]))
        if self.on_valid is not None:
            self.on_valid(valid)
        if self._phase == MessageType.TRAIN and len(valid) < self.min_valid_replies:
            reasons = "; ".join(f"node {f.node_id}: {f.reason}" for f in self.current.failures) or "no replies"
            raise TooFewValidReplies(
                f"round {self.current.round}: {len(valid)} valid train replies, fewer than "
                f"strategy.min-valid-replies={self.min_valid_replies} ({reasons})")
        return valid

    def _problem(self, msg: Message) -> str | None:
        """Why a reply without an error cannot be used, or None."""
        try:
            metrics = msg.content["metrics"]
            if msg.metadata.message_type != MessageType.TRAIN or EvalReport.present_in(metrics):
                EvalReport.from_metrics(metrics)
            if msg.metadata.message_type != MessageType.TRAIN:
                return None
            TrainReport.from_metrics(metrics)
        except (KeyError, TypeError, ValueError) as exc:
            return f"reply metrics are incomplete or malformed ({type(exc).__name__}: {exc})"
        if len(msg.content.array_records) != 1:
            return f"reply has {len(msg.content.array_records)} array records, not exactly the shared adapter"
        arrays = _arrays(msg)
        if set(arrays) != self.adapter_keys:
            return update_problem(dict.fromkeys(self.adapter_keys), arrays)
        return update_problem(self._global, arrays) if self._global else None

    def _record_reports(self, msg: Message, norm: float | None) -> None:
        metrics = msg.content["metrics"]
        if msg.metadata.message_type == MessageType.TRAIN:
            self.current.bytes_up += sum(a.count_bytes() for a in msg.content.array_records.values())
            report = TrainReport.from_metrics(metrics)
            client = self.current.client(report.partition_id, msg.metadata.src_node_id)
            client.num_examples, client.train, client.update_norm = report.num_examples, report.record(), norm
            if EvalReport.present_in(metrics) and self.held is not None:
                self.held.client(report.partition_id, msg.metadata.src_node_id).eval = \
                    EvalReport.from_metrics(metrics).record()
        else:
            report = EvalReport.from_metrics(metrics)
            self.current.client(report.partition_id, msg.metadata.src_node_id).eval = report.record()

    def _destination_of(self, reply: Message) -> int:
        """The node a reply answers for (an error reply about a lost node comes from the SuperLink)."""
        reply_to = reply.metadata.reply_to_message_id
        for sent in self._sent if reply_to else []:
            if reply_to in (sent.metadata.message_id, sent.object_id):
                return sent.metadata.dst_node_id
        return reply.metadata.src_node_id
