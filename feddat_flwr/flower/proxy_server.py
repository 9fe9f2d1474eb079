"""The server's FedPFT setup: the proxy built before round 1 and the alignment it runs between rounds."""

from __future__ import annotations

from collections.abc import Mapping
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord
from flwr.common.logger import log
from omegaconf import DictConfig

from feddat_flwr.fedpft.alignment import align, frozen_neurons
from feddat_flwr.fedpft.backbone import use_proxy_version
from feddat_flwr.fedpft.proxy import Proxy
from feddat_flwr.fedpft.public_data import public_batches
from feddat_flwr.flower.proxy_rounds import ProxyRounds
from feddat_flwr.model.backbone import AdaptedBackbone
from feddat_flwr.packing import unpack


def proxy_info(proxy: Proxy) -> dict[str, Any]:
    """What results.json `info` says of the run's proxy (its alignments are appended as they run)."""
    return {"digest": proxy.digest, "path": str(proxy.path), "kept": {str(i): len(n) for i, n in proxy.kept.items()},
            "build": proxy.stats, "alignments": []}


def proxy_rounds_for(cfg: DictConfig, full: AdaptedBackbone, proxy_backbone: AdaptedBackbone, proxy: Proxy,
                     layout: Mapping[str, torch.Tensor], info: dict[str, Any]) -> ProxyRounds:
    """FedPFT's rounds for this run with its proxy: the alignment
    re-distils the proxy against the full model, both carrying the round's global adapter.
    Seeded by the run's seed and the round, so a resumed run aligns as the uninterrupted one."""
    f = cfg.fedpft

    def realign(server_round: int, zeros: Mapping[int, torch.Tensor], tokens: int,
                arrays: ArrayRecord) -> dict[str, torch.Tensor]:
        if not tokens:
            log(WARNING, "FedPFT round %s: no client reported zero counts; the proxy stays as it is", server_round)
            return rounds.tensors
        global_adapter = unpack(arrays.to_torch_state_dict(), layout)
        for backbone in (full, proxy_backbone):
            backbone.load_adapter("shared", global_adapter)
            backbone.set_configuration("shared")
        use_proxy_version(proxy_backbone, proxy, rounds.tensors)
        seed = cfg["seed"] * 1009 + server_round
        frozen = frozen_neurons(zeros, tokens, f["align-keep"], torch.Generator().manual_seed(seed))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            batches = public_batches(f["public-data"], proxy_backbone.processor, batch_size=f["batch-size"], seed=seed)
            layers, losses = align(full.vilt, proxy_backbone.vilt, proxy.kept, frozen, batches,
                                   steps=f["align-steps"], lr=f["align-lr"])
        record = {"after-round": server_round, "frozen": {str(i): int(m.sum()) for i, m in frozen.items()},
                  "loss-first": losses[0] if losses else None, "loss-last": losses[-1] if losses else None}
        info["alignments"].append(record)
        log(INFO, "FedPFT alignment after round %s: distillation loss %s -> %s", server_round,
            record["loss-first"], record["loss-last"])
        return layers

    rounds = ProxyRounds(proxy, align_every=f["align-every"], num_rounds=cfg["num-rounds"], realign=realign)
    return rounds
