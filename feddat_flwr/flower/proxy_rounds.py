"""FedPFT's part of the rounds (method fedpft-proxy), on both sides of the messages.

Every train message carries the proxy's sha256 (a client checks its own proxy against it) and the
proxy version the server is at; in the alignment rounds it asks the clients to count their zero
FFN activations. After aggregating such a round the server re-distils the proxy (alignment.py) and
the next message to every node that has not trained on that version yet carries the new compressed
layers (`PROXY_RECORD`, counted in the round's bytes). A client keeps them in its private state.
The strategy wires it in (`FedDAT.use_proxy_rounds`): the round book shows it the valid replies,
and the end of each round runs the alignment, before the round's checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, Message, MessageType

from feddat_flwr.fedpft.alignment import summed_counts
from feddat_flwr.fedpft.proxy import Proxy

PROXY_RECORD = "fedpft-proxy"  # train message: the aligned compressed layers (an ArrayRecord)
DIGEST = "fedpft-digest"  # train/evaluate config: the sha256 of the proxy as built
VERSION = "fedpft-version"  # train config: the server's proxy version; reply metric: the client's
COUNT_ZEROS = "fedpft-count-zeros"  # train config: count zero activations this round

# (server round, summed zero counts per layer, token count, the round's aggregate) -> new layers
Realign = Callable[[int, Mapping[int, torch.Tensor], int, ArrayRecord], dict[str, torch.Tensor]]


class ProxyRounds:
    def __init__(self, proxy: Proxy, *, align_every: int, num_rounds: int, realign: Realign):
        self.proxy, self.align_every, self.num_rounds, self.realign = proxy, align_every, num_rounds, realign
        self.version = 0
        self.tensors: dict[str, torch.Tensor] = {}  # the current version's layers (empty: as built)
        self.acked: dict[int, int] = {}  # node id -> the version it last trained on
        self._counted: list = []  # the metrics of this round's train replies

    def counting(self, server_round: int) -> bool:
        """Whether the clients count zero activations in this round (an alignment follows it)."""
        return self.align_every > 0 and server_round % self.align_every == 0 and server_round < self.num_rounds

    def train_config(self, server_round: int) -> dict[str, Any]:
        return {DIGEST: self.proxy.digest, VERSION: self.version, COUNT_ZEROS: self.counting(server_round)}

    def with_layers(self, messages: Iterable[Message]) -> list[Message]:
        """The messages, each to a node behind the current version given the new layers as well."""
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if self.version > self.acked.get(node, 0):
                content = dict(msg.content.items()) | {PROXY_RECORD: ArrayRecord(self.tensors)}
                msg = Message(content=type(msg.content)(content), message_type=msg.metadata.message_type,
                              dst_node_id=node, group_id=msg.metadata.group_id)
            out.append(msg)
        return out

    def received(self, replies: list[Message]) -> None:
        """A batch of valid replies: the version each node trained on, and the round's zero counts."""
        train = [m for m in replies if m.metadata.message_type == MessageType.TRAIN]
        for msg in train:
            self.acked[msg.metadata.src_node_id] = int(msg.content["metrics"].get(VERSION, 0))
        self._counted += [m.content["metrics"] for m in train]

    def round_ended(self, server_round: int, aggregate: ArrayRecord) -> None:
        """After a counting round: the alignment, against the round's aggregate; a new version."""
        counted, self._counted = self._counted, []
        if self.counting(server_round):
            zeros, tokens = summed_counts(counted, self.proxy.kept)
            self.tensors = self.realign(server_round, zeros, tokens, aggregate)
            self.version += 1

    # -- checkpoint -------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {"version": self.version, "acked": {str(k): v for k, v in self.acked.items()}}, self.tensors

    def restore(self, state: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        self.version = int(state.get("version", 0))
        self.acked = {int(k): int(v) for k, v in state.get("acked", {}).items()}
        self.tensors = dict(tensors)


def received_layers(msg: Message) -> dict[str, torch.Tensor] | None:
    """The aligned compressed layers a train message brought, if any."""
    record = msg.content.array_records.get(PROXY_RECORD)
    return record.to_torch_state_dict() if record is not None else None
