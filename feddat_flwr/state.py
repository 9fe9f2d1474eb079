"""A client's private state (local adapter, head, label space) and where it is kept.

In a Flower ClientApp the state lives in `context.state` as records; nothing of it ever goes
into a reply message. With a node-config `state-dir`, it is also mirrored to disk after every
round and restored from there when `context.state` is empty (a restarted SuperNode).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from safetensors.torch import load_file, save_file

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


# -- durable mirror (deployment: a SuperNode restart loses context.state) ---------------------
STATE_FILES = ("local-adapter.safetensors", "head.safetensors", "meta.json")


def save_state_dir(path: Path, state: ClientState) -> None:
    """Mirror the state into `path` atomically: written to a temporary sibling, then swapped in.
    safetensors for tensors and JSON for the rest (no pickle)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        save_file({k: v.contiguous() for k, v in state.local.items()}, str(tmp / STATE_FILES[0]))
        save_file({k: v.contiguous() for k, v in state.head.items()}, str(tmp / STATE_FILES[1]))
        (tmp / STATE_FILES[2]).write_text(json.dumps({"labels": state.labels,
                                                      "rounds-trained": state.rounds_trained}))
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_state_dir(path: Path) -> ClientState | None:
    """The mirrored state in `path`, or None if nothing was mirrored there yet."""
    path = Path(path)
    if not path.is_dir():
        old = path.with_name(f".{path.name}.old")  # a swap interrupted between its two renames
        if not old.is_dir():
            return None
        path = old
    missing = [f for f in STATE_FILES if not (path / f).is_file()]
    if missing:
        raise ValueError(f"Client state directory {path} is incomplete (missing {missing}).")
    meta = json.loads((path / STATE_FILES[2]).read_text())
    return ClientState(
        local=load_file(str(path / STATE_FILES[0])),
        head=load_file(str(path / STATE_FILES[1])),
        labels=list(meta["labels"]),
        rounds_trained=int(meta["rounds-trained"]),
    )


STATE_DIR_KEY = "state-dir"  # node-config key of the durable mirror


def mirror_dir(node_config, run_id: int) -> Path | None:
    """Where this node mirrors its state for this run: <state-dir>/run-<run id>; None without one.
    Keyed by run so that a new run never picks up an earlier run's adapters."""
    root = node_config.get(STATE_DIR_KEY)
    return Path(str(root)) / f"run-{run_id}" if root else None


def restore_state(record: RecordDict, mirror: Path | None) -> ClientState | None:
    """The client's state: from context.state, else from the node's mirror, else None."""
    state = read_state(record)
    if state is None and mirror is not None:
        state = load_state_dir(mirror)
    return state


def persist_state(record: RecordDict, mirror: Path | None, state: ClientState) -> None:
    """Keep the state in context.state and, if the node has a mirror directory, write it there."""
    write_state(record, state)
    if mirror is not None:
        save_state_dir(mirror, state)
