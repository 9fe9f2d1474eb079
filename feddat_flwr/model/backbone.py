"""Frozen ViLT backbone with FedDAT's three LoRA adapters (shared, local, teacher).

One `AdaptedBackbone` is loaded per process and reused for every round and every client the
process serves; the per-client parts (adapter values, head) are copied in and out.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import ViltModel, ViltProcessor
from transformers.masking_utils import create_bidirectional_mask

from feddat_flwr.model.default_model import DEFAULT_MODEL, ensure_default_model

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


@dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]

    @classmethod
    def from_config(cls, lora_cfg: DictConfig) -> LoraSpec:
        modules = tuple(m.strip() for m in str(lora_cfg["target-modules"]).split(",") if m.strip())
        return cls(int(lora_cfg["rank"]), int(lora_cfg["alpha"]), float(lora_cfg["dropout"]), modules)

    def peft_config(self, base_model_name_or_path: str | None = None) -> LoraConfig:
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
            base_model_name_or_path=base_model_name_or_path,
        )


def resolve_model_path(name_or_path: str, cache_dir: str = "") -> str:
    """The embedded default is built on first use; anything else goes to from_pretrained as is."""
    if name_or_path == DEFAULT_MODEL:
        return str(ensure_default_model(cache_dir or None))
    return name_or_path


def _canonical(param_name: str, adapter: str) -> str:
    """PEFT parameter name -> adapter-independent key (PEFT's saved-adapter key format)."""
    return param_name.replace(f".{adapter}.", ".")


class AdaptedBackbone:
    """A PEFT-wrapped ViLT with adapters `shared`, `local`, `teacher` and configuration switching."""

    def __init__(self, name_or_path: str, lora: LoraSpec, *, device: str = "cpu", base: ViltModel | None = None):
        """`base`: a ViltModel to adapt instead of the checkpoint's own (FedPFT's proxy of it)."""
        base = base if base is not None else ViltModel.from_pretrained(name_or_path)
        for p in base.parameters():
            p.requires_grad_(False)
        self.name_or_path = name_or_path
        self.processor = ViltProcessor.from_pretrained(name_or_path)
        self.hidden_size = int(base.config.hidden_size)
        self.lora = lora
        with torch.random.fork_rng(devices=[]):  # the values are set per seed by `initial_adapter`
            self.model = get_peft_model(base, lora.peft_config(name_or_path), adapter_name="shared")
            for name in ADAPTERS[1:]:
                self.model.add_adapter(name, lora.peft_config(name_or_path))
        self.device = torch.device(device)
        self.model.to(self.device)
        # bf16 autocast for the backbone on GPUs that support it; adapters are stored in fp32.
        self.amp = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self._lora_layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
        adapted_embeddings = [n for n, m in base.embeddings.named_modules() if isinstance(m, LoraLayer)]
        if adapted_embeddings:  # `embed` computes them once for all configurations
            raise ValueError(
                f"lora.target-modules {list(lora.target_modules)} adapt embedding modules "
                f"{adapted_embeddings[:3]}; target encoder modules only (e.g. query, value, key, dense)."
            )
        self._params = {
            a: {_canonical(n, a): p for n, p in self.model.named_parameters() if f".{a}." in n}
            for a in ADAPTERS
        }
        self._active: tuple[str, ...] = ()
        self._trainable: frozenset[str] | None = None
        self._initial: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def vilt(self) -> ViltModel:
        """The adapted ViltModel itself (its modules carry the adapters)."""
        return self.model.get_base_model()

    def initial_adapter(self, seed: int) -> dict[str, torch.Tensor]:
        """The initial global adapter of a run with this `seed`: PEFT's own LoRA initialisation
        (A random, B = 0) drawn from a generator seeded with `seed`. The server sends it in round 1;
        a client of a method that communicates nothing computes the same values from the same seed."""
        if seed not in self._initial:
            current = self.adapter_state("shared")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for layer in self._lora_layers:
                    layer.reset_lora_parameters("shared", init_lora_weights=True)
            self._initial[seed] = self.adapter_state("shared")
            self.load_adapter("shared", current)
        return {k: v.clone() for k, v in self._initial[seed].items()}

    # -- adapter values -----------------------------------------------------------------
    def parameters_of(self, adapter: str) -> list[torch.nn.Parameter]:
        return list(self._params[adapter].values())

    def adapter_state(self, adapter: str) -> dict[str, torch.Tensor]:
        """A detached fp32 copy of one adapter's tensors, keyed as in PEFT's saved adapters."""
        return {k: p.detach().to("cpu", torch.float32, copy=True) for k, p in self._params[adapter].items()}

    @torch.no_grad()
    def load_adapter(self, adapter: str, state: Mapping[str, torch.Tensor]) -> None:
        params = self._params[adapter]
        if set(state) != set(params):
            unexpected, missing = sorted(set(state) - set(params)), sorted(set(params) - set(state))
            raise ValueError(
                f"Adapter '{adapter}' state does not match the model: "
                f"unexpected keys {unexpected[:3]}, missing keys {missing[:3]}."
            )
        for key, param in params.items():
            param.copy_(state[key])

    def adapter_num_bytes(self) -> int:
        return sum(p.numel() * 4 for p in self._params["shared"].values())

    def backbone_num_bytes(self) -> int:
        base = self.model.get_base_model()
        return sum(p.numel() * p.element_size() for n, p in base.named_parameters() if "lora_" not in n)

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
        if active != self._active:  # only the LoRA layers, not a walk over every module
            for layer in self._lora_layers:
                layer.set_adapter(list(active), inference_mode=True)
            self.model.base_model.active_adapter = list(active)
            self._active, self._trainable = active, None  # set_adapter froze the active adapters
        for layer in self._lora_layers:
            for adapter, scale in scales.items():
                layer.set_scale(adapter, scale)
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
        vilt = self.model.get_base_model()
        pixel_mask = batch.get("pixel_mask")
        if pixel_mask is None:
            pixel_mask = torch.ones(batch["pixel_values"].shape[0], *batch["pixel_values"].shape[-2:],
                                    dtype=torch.long, device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            hidden, mask = vilt.embeddings(
                batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), batch["pixel_values"],
                pixel_mask, None, None, image_token_type_idx=1,
            )
        return Embedded(hidden, create_bidirectional_mask(config=vilt.config, inputs_embeds=hidden,
                                                          attention_mask=mask))

    def encode(self, embedded: Embedded) -> torch.Tensor:
        """Pooled [CLS] representation (fp32) of embedded inputs in the current configuration."""
        vilt = self.model.get_base_model()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            sequence = vilt.encoder(embedded.hidden, attention_mask=embedded.mask)[0]
            return vilt.pooler(vilt.layernorm(sequence)).float()


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
def load_backbone(name_or_path: str, cache_dir: str, lora: LoraSpec, device: str = "cpu") -> AdaptedBackbone:
    """The process-wide backbone for a checkpoint, LoRA spec and device (loaded once per process)."""
    return AdaptedBackbone(resolve_model_path(name_or_path, cache_dir), lora, device=device)


def load_backbone_for(cfg: DictConfig, device: str | None = None) -> AdaptedBackbone:
    """The process-wide backbone named by a run configuration (on `train.device` unless given)."""
    return load_backbone(cfg.model["name-or-path"], cfg.model["cache-dir"], LoraSpec.from_config(cfg.lora),
                         device or resolve_device(cfg.train["device"]))
