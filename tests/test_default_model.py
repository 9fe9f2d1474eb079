"""The embedded default model: a reproducible build that loads like a hub checkpoint."""

from __future__ import annotations

from pathlib import Path

import easy_vqa
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import ViltModel, ViltProcessor

from feddat_flwr.model import default_model
from feddat_flwr.model.default_model import default_model_dir, ensure_default_model

STEPS = 5


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("default") / "model"
    return out, default_model.build_default_model(out, seed=3, steps=STEPS, progress=False)


def test_build_is_deterministic(built: tuple[Path, dict], tmp_path: Path) -> None:
    first, _ = built
    default_model.build_default_model(tmp_path, seed=3, steps=STEPS, progress=False)
    a, b = load_file(first / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_build_loads_like_a_hub_checkpoint(built: tuple[Path, dict]) -> None:
    path, stats = built
    model, info = ViltModel.from_pretrained(path, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    processor = ViltProcessor.from_pretrained(path)
    image_id = 0
    image = Image.open(easy_vqa.get_test_image_paths()[image_id]).convert("RGB")
    question = easy_vqa.get_test_questions()[0][0]
    inputs = processor(images=image, text=question, padding="max_length", truncation=True, return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, default_model.RECIPE.image_size, default_model.RECIPE.image_size)
    assert inputs["input_ids"].shape == (1, processor.tokenizer.model_max_length)
    assert processor.tokenizer.unk_token_id not in inputs["input_ids"][0].tolist()
    with torch.no_grad():
        out = model(**inputs)
    assert out.pooler_output.shape == (1, 128)
    assert (path / "recipe.json").is_file() and (path / "vocab.txt").is_file()
    assert stats["steps"] == STEPS


def test_fast_image_embeds_match_vilt() -> None:
    """Training embeds patches without ViLT's per-image loop; the result must not change."""
    model = default_model._new_model(vocab_size=40).eval()
    size = default_model.RECIPE.image_size
    ids, pixels = torch.randint(5, 40, (3, 8)), torch.randn(3, 3, size, size)
    heads = default_model._Heads(128)
    fast = default_model._forward(model, heads, ids, pixels, fast=True)
    slow = default_model._forward(model, heads, ids, pixels, fast=False)
    for f, s in zip(fast, slow):
        torch.testing.assert_close(f, s)


def test_ensure_reuses_a_built_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = default_model_dir(tmp_path)
    target.mkdir(parents=True)
    monkeypatch.setattr(default_model, "build_default_model", lambda *a, **k: pytest.fail("rebuilt"))
    assert ensure_default_model(tmp_path) == target


def test_ensure_builds_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_build(out_dir: Path, **kwargs) -> dict:
        assert out_dir != default_model_dir(tmp_path)  # built aside, moved into place after
        (out_dir / "config.json").write_text("{}")
        return {}

    monkeypatch.setattr(default_model, "build_default_model", fake_build)
    monkeypatch.setenv("FEDDAT_CACHE", str(tmp_path))
    target = ensure_default_model()
    assert target == default_model_dir(tmp_path) and (target / "config.json").is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, f"{target.name}.lock"])


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_build(out_dir: Path, **kwargs) -> dict:
        raise RuntimeError("boom")

    monkeypatch.setattr(default_model, "build_default_model", broken_build)
    with pytest.raises(RuntimeError, match="boom"):
        ensure_default_model(tmp_path)
    target = default_model_dir(tmp_path)
    assert [p.name for p in target.parent.iterdir()] == [f"{target.name}.lock"]
