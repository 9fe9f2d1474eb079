"""The server's book of a round: what was sent, what came back, what failed.

The Grid (feddat_flwr.flower.prompt_grid) shows the book every message it sends and every reply
it receives; the book counts the bytes, records each client's reports and drops a reply that
failed or that carries anything but the shared adapter, recording why and for which node. So the
strategy aggregates valid replies only, with FedAvg's own unmodified `aggregate_train`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import WARNING

from flwr.app import Message, MessageType
from flwr.common.logger import log

from feddat_flwr.records import EvalReport, Failure, RoundRecord, TrainReport


class RoundBook:
    def __init__(self, adapter_keys: Iterable[str]):
        self.adapter_keys = frozenset(adapter_keys)
        self.current: RoundRecord | None = None
        self._sent: list[Message] = []
        self._start = 0.0

    def begin(self, server_round: int, lr: float) -> None:
        self.current = RoundRecord(round=server_round, lr=lr)
        self._sent = []
        self._start = time.perf_counter()

    def close(self) -> RoundRecord:
        record, self.current = self.current, None
        record.close(time.perf_counter() - self._start)
        return record

    # -- the Grid's view --------------------------------------------------------------------
    def sent(self, messages: list[Message]) -> None:
        self._sent += messages
        for msg in messages:
            self.current.bytes_down += sum(a.count_bytes() for a in msg.content.array_records.values())

    def received(self, replies: Iterable[Message]) -> list[Message]:
        """The valid replies, each recorded; the others are recorded as failures."""
        valid = []
        for msg in replies:
            reason = msg.error.reason if msg.has_error() else self._record(msg)
            if reason is None:
                valid.append(msg)
            else:
                node = self._destination_of(msg)
                stage = msg.metadata.message_type
                log(WARNING, "Round %s %s: node %s failed: %s", self.current.round, stage, node, reason)
                self.current.failures.append(Failure(node, stage, reason))
        return valid

    def _record(self, msg: Message) -> str | None:
        """Record a reply's reports; the reason it is invalid, or None."""
        try:
            return self._record_reports(msg)
        except (KeyError, TypeError, ValueError) as exc:
            return f"reply metrics are incomplete or malformed ({type(exc).__name__}: {exc})"

    def _record_reports(self, msg: Message) -> str | None:
        metrics = msg.content["metrics"]
        if msg.metadata.message_type == MessageType.TRAIN:
            records = list(msg.content.array_records.values())
            keys = set(records[0].keys()) if len(records) == 1 else set()
            if keys != self.adapter_keys:
                extra = sorted(keys - self.adapter_keys)[:3]
                return f"reply arrays are not exactly the shared adapter (extra keys {extra})"
            self.current.bytes_up += records[0].count_bytes()
            report = TrainReport.from_metrics(metrics)
            client = self.current.client(report.partition_id, msg.metadata.src_node_id)
            client.num_examples, client.train = report.num_examples, report.record()
        else:
            report = EvalReport.from_metrics(metrics)
            self.current.client(report.partition_id, msg.metadata.src_node_id).eval = report.record()
        return None

    def _destination_of(self, reply: Message) -> int:
        """The node a reply answers for (an error reply about a lost node comes from the SuperLink)."""
        reply_to = reply.metadata.reply_to_message_id
        for sent in self._sent if reply_to else []:
            if reply_to in (sent.metadata.message_id, sent.object_id):
                return sent.metadata.dst_node_id
        return reply.metadata.src_node_id
