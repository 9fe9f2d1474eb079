"""Shared by the benchmark scripts: model sizes they time (random weights) and report output."""

from pathlib import Path

from transformers import ViltConfig, ViltModel, ViltProcessor

# ViLT-B/32 (dandelin/vilt-b32-mlm): 12 layers, hidden 768, 384x384 images in 32x32 patches.
VILT_B32 = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                image_size=384, patch_size=32, max_position_embeddings=40, vocab_size=30522)


def random_vilt_b32(out: Path, processor_from: str) -> str:
    """Save a ViLT-B/32-sized model with random weights (plus a processor so it loads like a checkpoint)."""
    ViltModel(ViltConfig(**VILT_B32)).save_pretrained(out)
    ViltProcessor.from_pretrained(processor_from).save_pretrained(out)
    return str(out)


def report(lines: list[str], out: Path | None) -> int:
    """Print a benchmark's report and, if asked, write it (e.g. under docs/results/); exit status 0."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return 0
