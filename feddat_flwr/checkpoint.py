"""The server's checkpoint: what a run needs to continue after its ServerApp died.

After every aggregated round the server writes, into <run dir>/checkpoint/: the global adapter of
that round (`adapter-round-<r>.safetensors`) and then `latest.json`, each atomically; `latest.json`
names the adapter and holds the rest: the run key, the round, the round's record still awaiting
its evaluation (see feddat_flwr.flower.round_book), the RNG state Flower samples clients with and
the privacy accountant's state, and in a FedPFT run the proxy's version, which node has it and its
aligned layers (`proxy-round-<r>.safetensors`). Older adapters are removed once `latest.json` points past them,
so a crash at any moment leaves a complete checkpoint of some round. results.json (written by the
run recorder) holds the closed rounds; on resume the checkpoint is the truth and results.json is
cut back to the rounds before it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from feddat_flwr.records import RoundRecord
from feddat_flwr.results import atomic_write_bytes

CHECKPOINT_DIR = "checkpoint"
LATEST = "latest.json"


@dataclass
class Checkpoint:
    run_key: str
    round: int  # the last aggregated round
    adapter: dict[str, torch.Tensor]  # its global adapter (empty for a method that sends none)
    held: RoundRecord | None  # its record, awaiting the evaluations of the next round's replies
    held_seconds: float
    rng_state: Any  # random.getstate()
    privacy: dict[str, Any] = field(default_factory=dict)  # feddat_flwr.flower.privacy state
    proxy: dict[str, Any] = field(default_factory=dict)  # FedPFT: feddat_flwr.flower.proxy_rounds state
    proxy_tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # and its aligned layers

    def save(self, run_dir: Path) -> None:
        folder = Path(run_dir) / CHECKPOINT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        adapter_file = f"adapter-round-{self.round}.safetensors"
        tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in self.adapter.items()}
        atomic_write_bytes(folder / adapter_file, save(tensors) if tensors else b"")
        latest = {"run-key": self.run_key, "round": self.round, "adapter": adapter_file,
                  "held": self.held.to_json() if self.held is not None else None,
                  "held-seconds": self.held_seconds, "rng-state": _jsonable(self.rng_state),
                  "privacy": self.privacy}
        proxy_file = f"proxy-round-{self.round}.safetensors"
        if self.proxy:  # a FedPFT run
            layers = {k: v.contiguous() for k, v in self.proxy_tensors.items()}
            atomic_write_bytes(folder / proxy_file, save(layers) if layers else b"")
            latest |= {"proxy": self.proxy, "proxy-layers": proxy_file}
        atomic_write_bytes(folder / LATEST, json.dumps(latest).encode())
        for pattern, kept in (("adapter-round-*.safetensors", adapter_file), ("proxy-round-*.safetensors", proxy_file)):
            for old in folder.glob(pattern):
                if old.name != kept:
                    old.unlink(missing_ok=True)

    @classmethod
    def load(cls, run_dir: Path) -> Checkpoint:
        """The run's checkpoint; a ValueError naming what is missing if there is none."""
        path = Path(run_dir) / CHECKPOINT_DIR / LATEST
        if not path.is_file():
            raise ValueError(f"resume-from {str(run_dir)!r} has no checkpoint ({path} is missing); "
                             "give the directory of a run this version of the app started.")
        d = json.loads(path.read_text())
        held = RoundRecord.from_json(d["held"]) if d["held"] is not None else None
        return cls(d["run-key"], int(d["round"]), _tensors(path.parent / d["adapter"]), held,
                   float(d["held-seconds"]), _rng_state(d["rng-state"]), d.get("privacy", {}), d.get("proxy", {}),
                   _tensors(path.parent / d["proxy-layers"]) if "proxy-layers" in d else {})


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint file's tensors (an empty file: none)."""
    return load_file(str(path)) if path.stat().st_size else {}


def _jsonable(state: Any) -> Any:
    return [_jsonable(x) for x in state] if isinstance(state, (tuple, list)) else state


def _rng_state(value: Any) -> Any:
    """random.getstate()'s tuple shape back from JSON lists."""
    version, internal, gauss = value
    return version, tuple(internal), gauss
