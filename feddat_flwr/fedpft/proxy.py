"""The FedPFT proxy of a run's model: the sub-FM after its layer-level distillation, built once.

Deterministic from the full checkpoint, the `fedpft.*` construction settings and the public data,
so every party builds the same proxy; cached like the default model (built under a lock, written
atomically) in <cache>/fedpft/proxy-<key>/: `kept.json` (the kept neurons of each compressed
layer and the build's statistics) and `proxy.safetensors` (the compressed layers' distilled
parameters; everything else is the full model's). The server sends each client the proxy's
sha256 (`digest`) with every train message: a client whose proxy differs stops with an error
instead of training on another model.
"""

from __future__ import annotations

import copy
import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file
from transformers import ViltModel, ViltProcessor

from feddat_flwr.fedpft.distill import distill
from feddat_flwr.fedpft.public_data import public_batches
from feddat_flwr.fedpft.subfm import compressed_parameter_names, compressed_tensors, kept_neurons, sub_fm

PROXY_FILE, KEPT_FILE = "proxy.safetensors", "kept.json"
_CODE = ("subfm.py", "distill.py", "public_data.py", "proxy.py")  # what the built proxy depends on


@dataclass(frozen=True)
class ProxySpec:
    """The `fedpft.*` settings that determine the proxy (not the federation's)."""

    retained_layers: tuple[int, ...]
    ffn_width: int  # 0: a quarter of the model's FFN
    public_data: str
    distill_steps: int
    distill_lr: float
    batch_size: int
    seed: int

    @classmethod
    def from_config(cls, cfg: DictConfig) -> ProxySpec:
        f = cfg.fedpft
        layers = tuple(int(x) for x in str(f["retained-layers"]).split(",") if x.strip())
        return cls(layers, f["ffn-width"], f["public-data"], f["distill-steps"], f["distill-lr"],
                   f["batch-size"], f["build-seed"])


@dataclass(frozen=True)
class Proxy:
    path: Path
    kept: dict[int, list[int]]
    tensors: dict[str, torch.Tensor]  # the distilled parameters of the compressed layers
    digest: str  # sha256 of proxy.safetensors and kept.json
    stats: dict


def _fingerprint(model_path: str) -> str:
    """The checkpoint's identity: its weight and config files' hash (a local directory) or its name."""
    root = Path(model_path)
    if not root.is_dir():
        return model_path
    h = hashlib.sha256()
    for f in sorted(p for p in root.iterdir() if p.suffix in (".safetensors", ".bin", ".json")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def proxy_dir(model_path: str, spec: ProxySpec, cache_root: Path) -> Path:
    code = hashlib.sha256(b"".join((Path(__file__).parent / f).read_bytes() for f in _CODE)).hexdigest()
    key = json.dumps({"model": _fingerprint(model_path), "spec": asdict(spec), "code": code}, sort_keys=True)
    return cache_root / "fedpft" / f"proxy-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _digest(path: Path) -> str:
    return hashlib.sha256((path / PROXY_FILE).read_bytes() + (path / KEPT_FILE).read_bytes()).hexdigest()


def build_proxy(model_path: str, spec: ProxySpec, out_dir: Path, *, progress: bool = True) -> None:
    """Construct the sub-FM of `model_path` and distil it layer by layer on the public data."""
    start = time.perf_counter()
    full = ViltModel.from_pretrained(model_path).eval().requires_grad_(False)
    processor = ViltProcessor.from_pretrained(model_path)
    width = spec.ffn_width or full.config.intermediate_size // 4
    kept = kept_neurons(full, spec.retained_layers, width)
    student = sub_fm(copy.deepcopy(full), kept).eval()
    parameters = [student.get_parameter(n) for n in compressed_parameter_names(kept)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        batches = public_batches(spec.public_data, processor, batch_size=spec.batch_size, seed=spec.seed)
        losses = distill(full, student, batches, parameters, steps=spec.distill_steps, lr=spec.distill_lr,
                         desc="Distilling the FedPFT proxy", progress=progress)
    stats = {"seconds": round(time.perf_counter() - start, 1), "steps": spec.distill_steps,
             "loss-first": round(losses[0], 5) if losses else None,
             "loss-last": round(sum(losses[-10:]) / len(losses[-10:]), 5) if losses else None,
             "full-parameters": sum(p.numel() for p in full.parameters()),
             "proxy-parameters": sum(p.numel() for p in student.parameters()),
             "ffn-width": width, "intermediate-size": full.config.intermediate_size}
    save_file({k: v.contiguous() for k, v in compressed_tensors(student, kept).items()}, str(out_dir / PROXY_FILE))
    (out_dir / KEPT_FILE).write_text(json.dumps({"kept": {str(i): n for i, n in kept.items()},
                                                 "spec": asdict(spec), "stats": stats}, indent=1) + "\n")


def read_proxy(path: Path) -> Proxy:
    meta = json.loads((path / KEPT_FILE).read_text())
    kept = {int(i): list(n) for i, n in meta["kept"].items()}
    return Proxy(path, kept, load_file(str(path / PROXY_FILE)), _digest(path), meta["stats"])


def ensure_proxy(model_path: str, spec: ProxySpec, cache_root: Path, *, progress: bool = True) -> Proxy:
    """The proxy of `model_path` under `spec`, built first if it is not in the cache (safe across
    concurrent processes: one builds, the others wait and read it)."""
    target = proxy_dir(model_path, spec, cache_root)
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.with_name(target.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.is_dir():
                tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
                try:
                    build_proxy(model_path, spec, tmp, progress=progress)
                    os.replace(tmp, target)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
    return read_proxy(target)


def proxy_model(model_path: str, proxy: Proxy) -> ViltModel:
    """The proxy as a ViltModel: the full checkpoint, cut to the kept neurons, distilled values in."""
    vilt = sub_fm(ViltModel.from_pretrained(model_path), proxy.kept)
    missing = set(compressed_parameter_names(proxy.kept)) - set(proxy.tensors)
    if missing:
        raise ValueError(f"FedPFT proxy {proxy.path} lacks {sorted(missing)[:3]}; delete the directory to rebuild it.")
    vilt.load_state_dict(proxy.tensors, strict=False)
    return vilt


@functools.lru_cache(maxsize=2)
def cached_proxy(model_path: str, spec: ProxySpec, cache_root: str) -> Proxy:
    """ensure_proxy, once per process."""
    return ensure_proxy(model_path, spec, Path(cache_root))


def check_digest(proxy: Proxy, expected: str) -> None:
    if expected and proxy.digest != expected:
        raise ValueError(f"This client's FedPFT proxy ({proxy.path}, sha256 {proxy.digest[:12]}) is not the "
                         f"server's (sha256 {expected[:12]}): the same checkpoint, fedpft settings and public "
                         "data build the same proxy; copy the server's proxy directory into this node's cache.")

