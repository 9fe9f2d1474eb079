"""LoRA adapters (`adapter.kind: lora`), through PEFT: the adapters are PEFT adapters of one
PeftModel, saved in PEFT's format (`PeftModel.from_pretrained` loads them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from omegaconf import DictConfig
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import ViltModel

from feddat_flwr.model.adapters import AdapterSpec, AttachedAdapters


@dataclass(frozen=True)
class LoraSpec(AdapterSpec):
    rank: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]

    kind: ClassVar[str] = "lora"

    @classmethod
    def from_config(cls, cfg: DictConfig) -> LoraSpec:
        lora_cfg = cfg.lora
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

    def saved_config(self, base_model_name_or_path: str) -> LoraConfig:
        return self.peft_config(base_model_name_or_path)

    def attach(self, vilt: ViltModel, names: Sequence[str]) -> LoraAdapters:
        model = get_peft_model(vilt, self.peft_config(), adapter_name=names[0])
        for name in names[1:]:
            model.add_adapter(name, self.peft_config())
        adapted_embeddings = [n for n, m in vilt.embeddings.named_modules() if isinstance(m, LoraLayer)]
        if adapted_embeddings:  # AdaptedBackbone.embed computes them once for all configurations
            raise ValueError(
                f"lora.target-modules {list(self.target_modules)} adapt embedding modules "
                f"{adapted_embeddings[:3]}; target encoder modules only (e.g. query, value, key, dense)."
            )
        return LoraAdapters(model)


class LoraAdapters(AttachedAdapters):
    def __init__(self, model: PeftModel):
        super().__init__(model, model.get_base_model())
        self._layers = [m for m in model.modules() if isinstance(m, LoraLayer)]

    def activate(self, names: Sequence[str]) -> None:
        # Layer by layer rather than PeftModel.set_adapter, which walks every module of the model.
        for layer in self._layers:
            layer.set_adapter(list(names), inference_mode=True)
        self.model.base_model.active_adapter = list(names)

    def set_scale(self, name: str, scale: float) -> None:
        for layer in self._layers:
            layer.set_scale(name, scale)

    def reset(self, name: str) -> None:
        for layer in self._layers:  # PEFT's own initialisation: A random, B = 0
            layer.reset_lora_parameters(name, init_lora_weights=True)
