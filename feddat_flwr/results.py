"""Run directory: results.json, accuracy.png and the final shared adapter, all written atomically.

The content of results.json is defined in feddat_flwr.records.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from feddat_flwr.model.adapters import WEIGHTS_FILE, SavedConfig
from feddat_flwr.records import MAJORITY, RESULTS_FILE, Results, RoundRecord

ADAPTER_DIR = "shared-adapter"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, then rename over `path` (readers never see a partial file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_run_dir(output_dir: str, run_id: int | str) -> Path:
    """The absolute run directory, created empty. An existing non-empty directory is refused."""
    if output_dir:
        path = Path(output_dir)
    else:
        path = Path.cwd() / "outputs" / f"{time.strftime('%Y%m%d-%H%M%S')}-run{run_id}"
    path = path.resolve()
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(
            f"output-dir {str(path)!r} is not empty; choose a new directory so earlier results are kept."
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_adapter(out_dir: Path, state: dict[str, torch.Tensor], config: SavedConfig) -> Path:
    """Save an adapter (its tensors by canonical key + its kind's `config`, AdapterSpec.saved_config)
    atomically: LoRA in PEFT's format, so that `PeftModel.from_pretrained(base_model, out_dir)`
    loads it; bottleneck for feddat_flwr.model.bottleneck.load_bottleneck."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        config.save_pretrained(str(tmp))
        tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported on first use: plotting is not
    on any client's path)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    """Write a finished matplotlib figure to `path` as PNG, atomically, and close it."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_accuracy(rounds: list[RoundRecord], path: Path) -> None:
    """Mean accuracy per variant over the evaluated rounds."""
    evaluated = [r for r in rounds if r.eval is not None]
    if not evaluated:
        return
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in evaluated[0].eval:
        ax.plot([r.round for r in evaluated], [r.eval[variant]["mean"] for r in evaluated],
                marker="o", label=variant, linestyle="--" if variant == MAJORITY else "-")
    ax.set_xlabel("round")
    ax.set_ylabel("mean client test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    save_png(fig, path)


class RunRecorder:
    """Keeps results.json and accuracy.png up to date after every round."""

    def __init__(self, run_dir: Path, config: dict[str, Any], info: dict[str, Any], *,
                 results: Results | None = None):
        """A new run's recorder, or, given the `results` of an interrupted run, one that goes on."""
        self.run_dir = run_dir
        self.results = results if results is not None else Results(config, info)
        self.write()

    def add_round(self, record: RoundRecord) -> None:
        self.results.add_round(record)
        self.write()
        plot_accuracy(self.results.rounds, self.run_dir / "accuracy.png")

    def stop(self, reason: str, unfinished: RoundRecord | None = None) -> None:
        """The run ends early: why, and the record of the round it stopped in, if any."""
        if unfinished is not None:
            self.results.rounds.append(unfinished)
        self.results.stopped = reason
        self.write()

    def write(self) -> None:
        atomic_write_bytes(self.run_dir / RESULTS_FILE, self.results.dumps().encode())
