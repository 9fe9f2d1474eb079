"""Frozen ViLT backbone with FedDAT's three adapters (shared, local, teacher), of any adapter kind.

One `AdaptedBackbone` is loaded per process and reused for every round and every client the
process serves; the per-client parts (adapter values, head) are copied in and out.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from transformers import ViltModel, ViltProcessor
from transformers.masking_utils import create_bidirectional_mask

from feddat_flwr.model.adapters import AdapterSpec, adapter_parameters, load_values
from feddat_flwr.model.bottleneck import BottleneckSpec
from feddat_flwr.model.default_model import DEFAULT_MODEL, ensure_default_model
from feddat_flwr.model.lora import LoraSpec

ADAPTERS = ("shared", "local", "teacher")
# The model configurations, named like the evaluation variants they give: which adapters are
# active, each with its scale factor. "dat" is the Dual-Adapter Teacher (local + teacher, each
# scaled by lambda); "shared" alone is FedDAT's student; "teacher" alone is the round's global adapter.
CONFIGURATIONS = {
    "shared": lambda lam: {"shared": 1.0},
    "dat": lambda lam: {"local": lam, "teacher": lam},
    "local": lambda lam: {"local": 1.0},
    "teacher": lambda lam: {"teacher": 1.0},
}


# The adapter kinds, by their value of `adapter.kind`.
ADAPTER_KINDS: dict[str, type[AdapterSpec]] = {spec.kind: spec for spec in (LoraSpec, BottleneckSpec)}


def adapter_spec(cfg: DictConfig) -> AdapterSpec:
    """The adapter spec of a run configuration (`adapter.kind` and that kind's settings)."""
    return ADAPTER_KINDS[cfg.adapter["kind"]].from_config(cfg)


def resolve_model_path(name_or_path: str, cache_dir: str = "") -> str:
    """The embedded default is built on first use; anything else goes to from_pretrained as is."""
    if name_or_path == DEFAULT_MODEL:
        return str(ensure_default_model(cache_dir or None))
    return name_or_path


class AdaptedBackbone:
    """A ViLT with adapters `shared`, `local`, `teacher` of one kind (`spec`) and configuration switching.

    `base`, when given, is the ViltModel to adapt (modified in place) instead of the checkpoint at
    `name_or_path`; the processor always comes from `name_or_path`. `model` runs the whole adapted
    ViLT; `vilt` is the plain ViltModel inside it, its layers adapted.
    """

    def __init__(self, name_or_path: str, spec: AdapterSpec, *, device: str = "cpu",
                 base: ViltModel | None = None):
        base = ViltModel.from_pretrained(name_or_path) if base is None else base
        for p in base.parameters():
            p.requires_grad_(False)
        self.name_or_path = name_or_path
        self.processor = ViltProcessor.from_pretrained(name_or_path)
        self.hidden_size = int(base.config.hidden_size)
        self.spec = spec
        with torch.random.fork_rng(devices=[]):  # the values are set per seed by `initial_adapter`
            self.adapters = spec.attach(base, ADAPTERS)
        self.model, self.vilt = self.adapters.model, self.adapters.vilt
        self.device = torch.device(device)
        self.model.to(self.device)
        # bf16 autocast for the backbone on GPUs that support it; adapters are stored in fp32.
        self.amp = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self._params = {a: adapter_parameters(self.model, a) for a in ADAPTERS}
        self._active: tuple[str, ...] = ()
        self._trainable: frozenset[str] | None = None
        self._initial: dict[int, dict[str, torch.Tensor]] = {}

    def initial_adapter(self, seed: int) -> dict[str, torch.Tensor]:
        """The initial global adapter of a run with this `seed`: the adapter kind's own
        initialisation (LoRA: PEFT's, A random, B = 0; bottleneck: down random, up = 0) drawn from a
        generator seeded with `seed`. The server sends it in round 1; a client of a method that
        communicates nothing computes the same values from the same seed."""
        if seed not in self._initial:
            current = self.adapter_state("shared")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.adapters.reset("shared")
            self._initial[seed] = self.adapter_state("shared")
            self.load_adapter("shared", current)
        return {k: v.clone() for k, v in self._initial[seed].items()}

    # -- adapter values -----------------------------------------------------------------
    def parameters_of(self, adapter: str) -> list[torch.nn.Parameter]:
        return list(self._params[adapter].values())

    def adapter_state(self, adapter: str) -> dict[str, torch.Tensor]:
        """A detached fp32 copy of one adapter's tensors, by canonical key (feddat_flwr.model.adapters;
        LoRA: as in PEFT's saved adapters; bottleneck: feddat_flwr.model.bottleneck.KEY_FORMAT)."""
        return {k: p.detach().to("cpu", torch.float32, copy=True) for k, p in self._params[adapter].items()}

    def load_adapter(self, adapter: str, state: Mapping[str, torch.Tensor]) -> None:
        load_values(self._params[adapter], state, f"Adapter '{adapter}'")

    def adapter_num_bytes(self) -> int:
        return sum(p.numel() * 4 for p in self._params["shared"].values())

    def backbone_num_bytes(self) -> int:
        adapter = {id(p) for params in self._params.values() for p in params.values()}
        return sum(p.numel() * p.element_size() for p in self.vilt.parameters() if id(p) not in adapter)

    # -- configurations -----------------------------------------------------------------
    def set_configuration(self, configuration: str, lam: float = 0.5, trainable: Collection[str] = ()) -> None:
        """Activate the adapters of a configuration (see CONFIGURATIONS) and make exactly the adapters
        in `trainable` trainable."""
        if configuration not in CONFIGURATIONS:
            raise ValueError(f"Unknown model configuration {configuration!r}; allowed: {', '.join(CONFIGURATIONS)}.")
        if "teacher" in trainable:
            raise ValueError("The teacher adapter is never trainable.")
        scales = CONFIGURATIONS[configuration](lam)
        active = tuple(scales)
        if active != self._active:
            self.adapters.activate(active)
            self._active, self._trainable = active, None  # activating may have frozen them
        for adapter, scale in scales.items():
            self.adapters.set_scale(adapter, scale)
        if frozenset(trainable) != self._trainable:
            for adapter in ADAPTERS:
                for p in self._params[adapter].values():
                    p.requires_grad_(adapter in trainable)
            self._trainable = frozenset(trainable)

    def to_device(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        return {k: v.to(self.device, non_blocking=non_blocking) for k, v in batch.items()}

    def embed(self, batch: Mapping[str, torch.Tensor]) -> Embedded:
        """The frozen text + image embeddings of a batch on the model's device. No adapter acts
        on them, so one embedding serves every configuration run on the batch."""
        pixel_mask = batch.get("pixel_mask")
        if pixel_mask is None:
            pixel_mask = torch.ones(batch["pixel_values"].shape[0], *batch["pixel_values"].shape[-2:],
                                    dtype=torch.long, device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            hidden, mask = self.vilt.embeddings(
                batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), batch["pixel_values"],
                pixel_mask, None, None, image_token_type_idx=1,
            )
        return Embedded(hidden, create_bidirectional_mask(config=self.vilt.config, inputs_embeds=hidden,
                                                          attention_mask=mask))

    def encode(self, embedded: Embedded) -> torch.Tensor:
        """Pooled [CLS] representation (fp32) of embedded inputs in the current configuration."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            sequence = self.vilt.encoder(embedded.hidden, attention_mask=embedded.mask)[0]
            return self.vilt.pooler(self.vilt.layernorm(sequence)).float()


@dataclass(frozen=True)
class Embedded:
    """A batch after ViLT's (frozen, unadapted) embedding layer: what the encoder runs on."""

    hidden: torch.Tensor  # [B, text + image tokens, hidden]
    mask: torch.Tensor | None  # the encoder's attention mask


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> str:
    """auto: the GPU Flower assigned to this process (CUDA_VISIBLE_DEVICES) if any, else the CPU."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'.")
    return name


@functools.lru_cache(maxsize=2)
def load_backbone(name_or_path: str, cache_dir: str, spec: AdapterSpec, device: str = "cpu") -> AdaptedBackbone:
    """The process-wide backbone for a checkpoint, adapter spec and device (loaded once per process)."""
    return AdaptedBackbone(resolve_model_path(name_or_path, cache_dir), spec, device=device)


def load_backbone_for(cfg: DictConfig, device: str | None = None) -> AdaptedBackbone:
    """The process-wide backbone named by a run configuration (on `train.device` unless given)."""
    return load_backbone(cfg.model["name-or-path"], cfg.model["cache-dir"], adapter_spec(cfg),
                         device or resolve_device(cfg.train["device"]))
