"""A client's private state (local adapter, head, label space) and its durable disk mirror.

The state never goes into a reply. In a Flower ClientApp it lives in `context.state`
(feddat_flwr.flower.state); with a node-config `state-dir` it is also mirrored to disk after
every round and restored from there when `context.state` is empty (a restarted SuperNode).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE_FILES = ("local-adapter.safetensors", "head.safetensors", "meta.json")


@dataclass
class ClientState:
    local: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    labels: list[str]
    rounds_trained: int = 0


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
