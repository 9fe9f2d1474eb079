"""A tiny random ViLT checkpoint saved with save_pretrained, for tests (no hub, no build)."""

from pathlib import Path

import torch
from transformers import ViltConfig, ViltModel


def save_tiny_vilt(out_dir: Path, processor) -> Path:
    config = ViltConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=64, patch_size=16, max_position_embeddings=processor.tokenizer.model_max_length,
        vocab_size=len(processor.tokenizer), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    ViltModel(config).save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
