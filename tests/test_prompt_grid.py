"""PromptGrid returns every reply soon after it arrives and honours the timeout (fake grid, no Flower run)."""

import time
from types import SimpleNamespace

import pytest

from feddat_flwr.flower.prompt_grid import PromptGrid


class FakeGrid:
    """Replies to message i become available `delays[i]` seconds after the push."""

    def __init__(self, delays):
        self.delays, self.pulls, self.pushed_at = delays, 0, None

    def push_messages(self, messages):
        self.pushed_at = time.monotonic()
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        age = time.monotonic() - self.pushed_at
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in sorted(ids)
                if self.delays[int(i[1:])] <= age]

    def get_node_ids(self):
        return [1, 2]


def test_all_replies_are_collected_soon_after_the_last_one_arrives():
    fake = FakeGrid([0.0, 0.2, 0.4])
    start = time.monotonic()
    replies = PromptGrid(fake).send_and_receive(["a", "b", "c"])
    elapsed = time.monotonic() - start
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert 0.4 <= elapsed < 2.5  # Flower's own grid would return at 3 s (slack for a loaded machine)
    assert fake.pulls < 20


def test_timeout_returns_what_arrived():
    fake = FakeGrid([0.0, 10.0])
    start = time.monotonic()
    replies = PromptGrid(fake).send_and_receive(["a", "b"], timeout=0.5)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert time.monotonic() - start < 2.5


def test_other_calls_are_delegated_and_bad_waits_rejected():
    assert list(PromptGrid(FakeGrid([])).get_node_ids()) == [1, 2]
    with pytest.raises(ValueError, match="0 < first_wait <= longest_wait"):
        PromptGrid(FakeGrid([]), first_wait=2.0, longest_wait=1.0)
