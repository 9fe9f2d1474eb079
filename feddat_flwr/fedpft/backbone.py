"""The process-wide FedPFT proxy backbone: the run's adapters on the proxy of its model."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
from omegaconf import DictConfig

from feddat_flwr.fedpft.proxy import Proxy, ProxySpec, ensure_proxy, proxy_model
from feddat_flwr.fedpft.subfm import load_compressed
from feddat_flwr.model.adapters import AdapterSpec
from feddat_flwr.model.backbone import AdaptedBackbone, adapter_spec, resolve_device, resolve_model_path
from feddat_flwr.model.default_model import cache_root


@functools.lru_cache(maxsize=2)
def load_proxy_backbone(name_or_path: str, cache_dir: str, adapters: AdapterSpec, spec: ProxySpec,
                        device: str = "cpu") -> tuple[AdaptedBackbone, Proxy]:
    """(the proxy with the run's adapters, the proxy artefact), built on first use, once per process."""
    path = resolve_model_path(name_or_path, cache_dir)
    proxy = ensure_proxy(path, spec, cache_root(cache_dir or None))
    return AdaptedBackbone(path, adapters, device=device, base=proxy_model(path, proxy)), proxy


def proxy_backbone_for(cfg: DictConfig, device: str | None = None) -> tuple[AdaptedBackbone, Proxy]:
    return load_proxy_backbone(cfg.model["name-or-path"], cfg.model["cache-dir"], adapter_spec(cfg),
                               ProxySpec.from_config(cfg), device or resolve_device(cfg.train["device"]))


def use_proxy_version(backbone: AdaptedBackbone, proxy: Proxy, tensors: Mapping[str, torch.Tensor]) -> None:
    """Put a version of the compressed layers into the proxy backbone (empty: the proxy as built)."""
    load_compressed(backbone.vilt, tensors or proxy.tensors)
