"""A client's private state (local adapter, head, label space) and where it is kept.

In a Flower ClientApp the state lives in `context.state` as records; nothing of it ever goes
into a reply message.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

LOCAL_KEY = "feddat.local-adapter"
HEAD_KEY = "feddat.head"
META_KEY = "feddat.meta"


@dataclass
class ClientState:
    local: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    labels: list[str]
    rounds_trained: int = 0


def read_state(record: RecordDict) -> ClientState | None:
    """The state stored in `record` (a ClientApp's context.state), or None before the first round."""
    if META_KEY not in record:
        return None
    meta = record[META_KEY]
    return ClientState(
        local=record[LOCAL_KEY].to_torch_state_dict(),
        head=record[HEAD_KEY].to_torch_state_dict(),
        labels=list(meta["labels"]),
        rounds_trained=int(meta["rounds-trained"]),
    )


def write_state(record: RecordDict, state: ClientState) -> None:
    record[LOCAL_KEY] = ArrayRecord(state.local)
    record[HEAD_KEY] = ArrayRecord(state.head)
    record[META_KEY] = ConfigRecord({"labels": list(state.labels), "rounds-trained": state.rounds_trained})
