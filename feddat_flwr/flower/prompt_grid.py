"""A Flower Grid that collects replies promptly.

Flower's HTTP grid checks for replies every 3 s, so each train or evaluate phase of a round ends
up to 3 s after its last reply; on short rounds that is a large share of the wall time.
`PromptGrid` wraps any Grid and polls with a short interval that backs off while nothing
arrives (50 ms doubling to 100 ms, back to 50 ms after each reply; a poll is one small request
to the SuperLink, or an in-memory look-up in a simulation, where Flower's own grid polls every
100 ms); everything else is delegated.
Given a `RoundBook`, it shows the book every message it sends and returns only the replies the
book accepts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.supercore.run import Run
from flwr.serverapp import Grid

from feddat_flwr.flower.round_book import RoundBook


class PromptGrid(Grid):
    def __init__(self, grid: Grid, *, book: RoundBook | None = None, first_wait: float = 0.05,
                 longest_wait: float = 0.1):
        if not 0 < first_wait <= longest_wait:
            raise ValueError(f"need 0 < first_wait <= longest_wait, got {first_wait} and {longest_wait}")
        self._grid = grid
        self._book = book
        self._first_wait = first_wait
        self._longest_wait = longest_wait

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push the messages and return their replies: all of them, or those that arrived
        within `timeout` seconds (None: wait for all)."""
        messages = list(messages)
        if self._book is not None:
            self._book.sent(messages)
        pending = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        wait = self._first_wait
        while pending:
            pulled = list(self._grid.pull_messages(pending))
            replies.extend(pulled)
            pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
            remaining = float("inf") if deadline is None else deadline - time.monotonic()
            if not pending or remaining <= 0:
                break
            time.sleep(min(wait, remaining))
            wait = self._first_wait if pulled else min(2 * wait, self._longest_wait)
        return replies if self._book is None else self._book.received(replies)

    # -- delegated ----------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self):
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)
