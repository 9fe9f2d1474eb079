"""A client's private state in a Flower ClientApp: `context.state` records and the node's mirror.

Nothing of it ever goes into a reply message (see feddat_flwr.client_state for the state itself).
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from feddat_flwr.client_state import STATE_DIR_KEY, ClientState, load_snapshot, save_snapshot

LOCAL_KEY = "feddat.local-adapter"
HEAD_KEY = "feddat.head"
META_KEY = "feddat.meta"
PROXY_KEY = "feddat.proxy"


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
        last_round=int(meta.get("last-round", 0)),
        proxy=record[PROXY_KEY].to_torch_state_dict() if PROXY_KEY in record else {},
        proxy_version=int(meta.get("proxy-version", 0)),
    )


def write_state(record: RecordDict, state: ClientState) -> None:
    record[LOCAL_KEY] = ArrayRecord(state.local)
    record[HEAD_KEY] = ArrayRecord(state.head)
    record[META_KEY] = ConfigRecord({"labels": list(state.labels), "rounds-trained": state.rounds_trained,
                                     "last-round": state.last_round, "proxy-version": state.proxy_version})
    if state.proxy:
        record[PROXY_KEY] = ArrayRecord(state.proxy)


def mirror_dir(node_config, run_key: str, client_state_dir: str = "") -> Path | None:
    """Where this node mirrors its state for this run: <state-dir>/run-<run key> (node-config
    `state-dir`), else, in a simulation with `client-state-dir`, <client-state-dir>/partition-<id>/
    run-<run key>; None without either. The run key (results.json `info`) stays the same when a
    run is resumed, and a new run never picks up an earlier run's adapters."""
    root = node_config.get(STATE_DIR_KEY)
    if root:
        return Path(str(root)) / f"run-{run_key}"
    if client_state_dir:
        return Path(client_state_dir) / f"partition-{node_config.get('partition-id', 'none')}" / f"run-{run_key}"
    return None


def restore_state(record: RecordDict, mirror: Path | None, before_round: int) -> ClientState | None:
    """The client's state as it was before server round `before_round`: from context.state, else
    from the node's mirror, else None (a client that never trained)."""
    state = read_state(record)
    if state is not None and state.last_round < before_round:
        return state
    return load_snapshot(mirror, before_round) if mirror is not None else None


def persist_state(record: RecordDict, mirror: Path | None, state: ClientState) -> None:
    """Keep the state in context.state and, if the node has a mirror directory, write it there."""
    write_state(record, state)
    if mirror is not None:
        save_snapshot(mirror, state)
