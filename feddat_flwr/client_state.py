"""A client's private state (local adapter, head, label space) and its durable disk mirror.

The state never goes into a reply. In a Flower ClientApp it lives in `context.state`
(feddat_flwr.flower.state); with a node-config `state-dir` it is also mirrored to disk after
every round and restored from there when `context.state` is empty (a restarted SuperNode, or a
resumed run). The mirror keeps one snapshot per server round trained (`round-<k>/`, the newest
`KEEP_SNAPSHOTS`), so that a run resumed from the server's checkpoint after round k finds each
client's state as it was after round k, even if the client had already trained round k + 1.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE_FILES = ("local-adapter.safetensors", "head.safetensors", "meta.json")
PROXY_FILE = "proxy.safetensors"  # only in the state of a FedPFT client whose proxy was aligned
STATE_DIR_KEY = "state-dir"  # node-config key of the node's durable directory (the mirror, the data cache)


@dataclass
class ClientState:
    local: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    labels: list[str]
    rounds_trained: int = 0
    last_round: int = 0  # the server round the state was last trained in (0: not yet)
    # FedPFT: the proxy's compressed layers as last aligned by the server, and their version
    # (empty and 0: the proxy as built; see feddat_flwr.fedpft)
    proxy: dict[str, torch.Tensor] = field(default_factory=dict)
    proxy_version: int = 0


KEEP_SNAPSHOTS = 2


def save_state_dir(path: Path, state: ClientState) -> None:
    """Mirror the state into `path` atomically: written to a temporary sibling, then swapped in.
    safetensors for tensors and JSON for the rest (no pickle)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        save_file({k: v.contiguous() for k, v in state.local.items()}, str(tmp / STATE_FILES[0]))
        save_file({k: v.contiguous() for k, v in state.head.items()}, str(tmp / STATE_FILES[1]))
        if state.proxy:
            save_file({k: v.contiguous() for k, v in state.proxy.items()}, str(tmp / PROXY_FILE))
        (tmp / STATE_FILES[2]).write_text(json.dumps({"labels": state.labels, "rounds-trained": state.rounds_trained,
                                                      "last-round": state.last_round,
                                                      "proxy-version": state.proxy_version}))
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
        last_round=int(meta.get("last-round", 0)),
        proxy=load_file(str(path / PROXY_FILE)) if (path / PROXY_FILE).is_file() else {},
        proxy_version=int(meta.get("proxy-version", 0)),
    )


def _snapshots(mirror: Path) -> dict[int, Path]:
    """The mirror's snapshots by round (a snapshot interrupted mid-swap counts as its round)."""
    found = {}
    for path in Path(mirror).glob("round-*") if Path(mirror).is_dir() else []:
        if path.is_dir() and path.name.removeprefix("round-").isdigit():
            found[int(path.name.removeprefix("round-"))] = path
    for path in Path(mirror).glob(".round-*.old") if Path(mirror).is_dir() else []:
        round_ = path.name.removeprefix(".round-").removesuffix(".old")
        if round_.isdigit():
            found.setdefault(int(round_), path.with_name(f"round-{round_}"))
    return found


def save_snapshot(mirror: Path, state: ClientState) -> None:
    """Mirror `state` as the snapshot of its round; only the newest KEEP_SNAPSHOTS are kept."""
    save_state_dir(Path(mirror) / f"round-{state.last_round}", state)
    for round_ in sorted(_snapshots(mirror))[:-KEEP_SNAPSHOTS]:
        shutil.rmtree(Path(mirror) / f"round-{round_}", ignore_errors=True)


def load_snapshot(mirror: Path, before_round: int) -> ClientState | None:
    """The newest mirrored state trained before server round `before_round`, or None."""
    earlier = [r for r in _snapshots(mirror) if r < before_round]
    return load_state_dir(Path(mirror) / f"round-{max(earlier)}") if earlier else None
