"""A client's private state in a Flower ClientApp: `context.state` records and the node's mirror.

Nothing of it ever goes into a reply message (see feddat_flwr.client_state for the state itself).
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from feddat_flwr.client_state import ClientState, load_state_dir, save_state_dir

LOCAL_KEY = "feddat.local-adapter"
HEAD_KEY = "feddat.head"
META_KEY = "feddat.meta"
STATE_DIR_KEY = "state-dir"  # node-config key of the durable mirror


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
