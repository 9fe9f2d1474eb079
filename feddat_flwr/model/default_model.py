"""The embedded default foundation model: a tiny ViLT pretrained offline on easy-VQA.

The recipe builds a word-level tokenizer and a 56x56 image processor (8x8 patches), then
pretrains a small ViLT from scratch on captions of the easy-VQA TRAIN images ("there is a red
circle") with image-conditioned masked language modelling (colour/shape words masked),
image-text matching on half-corrupted captions, which word of a corrupted caption does not match
the image, and the image's colour and shape from its [CLS] patch token. The result is saved like a hub checkpoint: `ViltModel.from_pretrained(path)` and
`ViltProcessor.from_pretrained(path)` load it. The VQA questions are never trained on, so the
downstream task still needs finetuning.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import easy_vqa
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    BertTokenizerFast,
    ViltConfig,
    ViltForMaskedLM,
    ViltImageProcessorPil,
    ViltProcessor,
)

from feddat_flwr.data.attributes import COLORS, SHAPES, image_attributes as _image_attributes, words as _words

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
RECIPE_VERSION = 2

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Every caption names the colour and the shape, so either can be masked or corrupted.
CAPTIONS = (
    "a {color} {shape}",
    "there is a {color} {shape}",
    "the {shape} is {color}",
    "the {color} shape is a {shape}",
    "the color of the {shape} is {color}",
    "a {color} {shape} is present",
    "the image contains a {color} {shape}",
    "there is a {color} {shape} in the image",
    "the shape in the image is a {color} {shape}",
    "the image shows a {color} shape that is a {shape}",
)


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the built model (hashed into its directory name)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    image_size: int = 56  # 7x7 patches of 8x8 pixels: 16x16 patches leave shape at chance
    patch_size: int = 8
    text_length: int = 16  # positions incl. [CLS]/[SEP]; easy-VQA questions need at most 12
    batch_size: int = 32  # per objective: 32 MLM + 32 ITM examples a step
    steps: int = 700
    lr: float = 2e-3
    warmup: float = 0.1  # fraction of the steps, then cosine decay to 0
    weight_decay: float = 0.01
    # Each of the two words masked on its own (the shape when neither is drawn): the probes mask
    # one word with the other in view, which training must show too.
    color_mask_prob: float = 0.5
    shape_mask_prob: float = 0.5
    other_mask_prob: float = 0.15  # other caption words
    itm_weight: float = 2.0
    mismatch_weight: float = 1.0  # per word of an ITM caption: is it the corrupted one?
    attribute_weight: float = 1.0  # the image's colour and shape from its [CLS] patch token
    seed: int = 0


RECIPE = Recipe()


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where built models live: cache_dir (model.cache-dir), else $FEDDAT_CACHE, else ~/.cache/feddat-flwr."""
    return Path(cache_dir or os.environ.get("FEDDAT_CACHE") or Path.home() / ".cache" / "feddat-flwr").expanduser()


def default_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """<cache_root(cache_dir)>/models/default-<recipe hash>."""
    recipe = {"version": RECIPE_VERSION, "recipe": asdict(RECIPE), "captions": CAPTIONS}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    return cache_root(cache_dir) / "models" / f"default-{digest}"


def ensure_default_model(cache_dir: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """default_model_dir(cache_dir), built first if missing (safe across concurrent processes)."""
    target = default_model_dir(cache_dir)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if target.is_dir():  # built by another process while we waited
            return target
        logger.info("Building the default model into %s (once, about 5 minutes).", target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            build_default_model(tmp, progress=progress)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def build_default_model(
    out_dir: Path, *, seed: int = RECIPE.seed, steps: int = RECIPE.steps, progress: bool = True
) -> dict:
    """Build the default model into out_dir; returns build stats (also in recipe.json)."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = _make_processor(out_dir)
    train = _ImageSet.load("train", processor)
    test = _ImageSet.load("test", processor)
    captions = _CaptionTable(processor.tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # weight init and ViLT's patch sampling use the global RNG
        generator = torch.Generator().manual_seed(seed)
        model = _new_model(len(processor.tokenizer))
        heads = _Heads(RECIPE.hidden_size)
        losses = _pretrain(model, heads, train, captions, steps, generator, progress)
        probe = _probe(model, heads, test, captions, seed)
    model.vilt.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    stats = {"steps": steps, "seconds": round(time.perf_counter() - start, 1), **losses, **probe}
    provenance = {"version": RECIPE_VERSION, "recipe": asdict(RECIPE), "captions": CAPTIONS,
                  "seed": seed, "stats": stats, "torch": torch.__version__}
    (out_dir / "recipe.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return stats


def _make_processor(out_dir: Path) -> ViltProcessor:
    """Word-level BERT tokenizer (vocab.txt written to out_dir) + 56x56 ViLT image processor (8x8 patches)."""
    questions, answers, _ = easy_vqa.get_train_questions()
    captions = [c.format(color=k, shape=s) for c in CAPTIONS for k in COLORS for s in SHAPES]
    words = {w for text in [*questions, *answers, *captions] for w in _words(text)}
    vocab = out_dir / "vocab.txt"
    vocab.write_text("\n".join([*SPECIAL_TOKENS, *sorted(words)]) + "\n")
    tokenizer = BertTokenizerFast(
        vocab=str(vocab), do_lower_case=True, model_max_length=RECIPE.text_length
    )
    all_questions = questions + easy_vqa.get_test_questions()[0]
    longest = max(len(ids) for ids in tokenizer(all_questions)["input_ids"])
    if longest > RECIPE.text_length:
        raise ValueError(f"An easy-VQA question has {longest} tokens > text_length={RECIPE.text_length}.")
    image_processor = ViltImageProcessorPil(
        size={"shortest_edge": RECIPE.image_size}, size_divisor=RECIPE.patch_size
    )
    return ViltProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _vilt_config(vocab_size: int) -> ViltConfig:
    r = RECIPE
    return ViltConfig(
        vocab_size=vocab_size, hidden_size=r.hidden_size, num_hidden_layers=r.num_layers,
        num_attention_heads=r.num_heads, intermediate_size=r.intermediate_size,
        image_size=r.image_size, patch_size=r.patch_size, max_position_embeddings=r.text_length,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0,
    )


def _new_model(vocab_size: int) -> ViltForMaskedLM:
    """A freshly initialised ViLT with MLM head. ViLT leaves the image [CLS] token and patch
    position embeddings at zero; they get ViT's init so patches know where they are from the start."""
    model = ViltForMaskedLM(_vilt_config(vocab_size))
    embeddings = model.vilt.embeddings
    for parameter in (embeddings.cls_token, embeddings.position_embeddings):
        nn.init.trunc_normal_(parameter, std=0.02)
    return model


@dataclass
class _ImageSet:
    """All images of an easy-VQA split, preprocessed, with each image's colour and shape index."""

    pixel_values: torch.Tensor  # [N, 3, H, W]
    color: torch.Tensor  # [N] index into COLORS
    shape: torch.Tensor  # [N] index into SHAPES

    @classmethod
    def load(cls, split: str, processor: ViltProcessor) -> _ImageSet:
        get_questions = getattr(easy_vqa, f"get_{split}_questions")
        paths = getattr(easy_vqa, f"get_{split}_image_paths")()
        attributes = _image_attributes(*get_questions())
        ids = sorted(attributes)
        images = [Image.open(paths[i]).convert("RGB") for i in ids]
        batch = processor.image_processor(images, return_tensors="pt")
        size = (RECIPE.image_size, RECIPE.image_size)
        if batch["pixel_values"].shape[-2:] != size or not bool(batch["pixel_mask"].all()):
            raise ValueError(f"Image processor gave {tuple(batch['pixel_values'].shape)}, expected {size}.")
        return cls(
            pixel_values=batch["pixel_values"],
            color=torch.tensor([COLORS.index(attributes[i][0]) for i in ids]),
            shape=torch.tensor([SHAPES.index(attributes[i][1]) for i in ids]),
        )


class _CaptionTable:
    """Token ids of every caption for every (template, colour, shape), padded to one length."""

    def __init__(self, tokenizer: BertTokenizerFast):
        texts = [c.format(color=k, shape=s) for c in CAPTIONS for k in COLORS for s in SHAPES]
        ids = tokenizer(texts, padding="longest", return_tensors="pt")["input_ids"]
        self.ids = ids.view(len(CAPTIONS), len(COLORS), len(SHAPES), -1)
        self.mask_id = tokenizer.mask_token_id
        self.color_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(COLORS)))
        self.shape_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(SHAPES)))
        self.special_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)))

    def get(self, template: torch.Tensor, color: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        return self.ids[template, color, shape]

    def mask(
        self, ids: torch.Tensor, color: torch.Tensor, shape: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked ids, MLM labels): the colour and the shape word each masked with its recipe
        probability (the shape when neither is drawn), plus a random share of the other words;
        labels are -100 where nothing is to be predicted."""
        n = len(ids)
        mask_color = torch.rand(n, 1, generator=generator) < RECIPE.color_mask_prob
        mask_shape = (torch.rand(n, 1, generator=generator) < RECIPE.shape_mask_prob) | ~mask_color
        is_color = ids == self.color_ids[color][:, None]
        is_shape = ids == self.shape_ids[shape][:, None]
        other = ~(is_color | is_shape | torch.isin(ids, self.special_ids))
        masked = (is_color & mask_color) | (is_shape & mask_shape)
        masked |= other & (torch.rand(ids.shape, generator=generator) < RECIPE.other_mask_prob)
        return ids.masked_fill(masked, self.mask_id), ids.masked_fill(~masked, -100)


class _Heads(nn.Module):
    """The pretraining heads beside ViLT's own MLM head (dropped after the build): ITM [no match,
    match] on the pooled output, mismatch (one logit per text position), attributes (colour then
    shape logits from the image [CLS] token)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.itm = nn.Linear(hidden_size, 2)
        self.mismatch = nn.Linear(hidden_size, 1)
        self.attributes = nn.Linear(hidden_size, len(COLORS) + len(SHAPES))


def _forward(
    model: ViltForMaskedLM, heads: _Heads, ids: torch.Tensor, pixel_values: torch.Tensor, *, fast: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(MLM logits over the text positions, ITM logits, mismatch logits per text position,
    attribute logits). fast: embed the patches with `_image_embeds` instead of ViLT's
    `visual_embed` (same result, no per-image loop)."""
    if fast:
        images = {"image_embeds": _image_embeds(model, pixel_values)}
        images["pixel_mask"] = torch.ones(images["image_embeds"].shape[:2], dtype=torch.long)
    else:
        pixel_mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[-2:], dtype=torch.long)
        images = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
    out = model.vilt(input_ids=ids, attention_mask=(ids != 0).long(), **images)
    text = out.last_hidden_state[:, : ids.shape[1]]
    return (model.mlm_score(text), heads.itm(out.pooler_output), heads.mismatch(text).squeeze(-1),
            heads.attributes(out.last_hidden_state[:, ids.shape[1]]))


def _image_embeds(model: ViltForMaskedLM, pixel_values: torch.Tensor) -> torch.Tensor:
    """ViLT's visual embedding ([CLS] + patches + position embeddings) of unpadded images of
    the configured size: all patches, in order, so no resampling or interpolation is needed."""
    embeddings = model.vilt.embeddings
    patches = embeddings.patch_embeddings(pixel_values).flatten(2).transpose(1, 2)
    cls = embeddings.cls_token.expand(len(patches), -1, -1)
    return torch.cat([cls, patches], dim=1) + embeddings.position_embeddings


def _corrupt(
    color: torch.Tensor, shape: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Change the colour or the shape (1/2 each) to another one."""
    n = len(color)
    change_color = torch.rand(n, generator=generator) < 0.5
    new_color = (color + torch.randint(1, len(COLORS), (n,), generator=generator)) % len(COLORS)
    new_shape = (shape + torch.randint(1, len(SHAPES), (n,), generator=generator)) % len(SHAPES)
    return torch.where(change_color, new_color, color), torch.where(change_color, shape, new_shape)


def _pretrain(
    model: ViltForMaskedLM, heads: _Heads, data: _ImageSet, captions: _CaptionTable,
    steps: int, generator: torch.Generator, progress: bool,
) -> dict[str, float]:
    """MLM on masked captions of the images + ITM and mismatch on half-corrupted captions, in
    one batch, + the attributes of every image in it."""
    r = RECIPE
    params = [*model.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)
    warmup = max(1, round(r.warmup * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup
        else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))),
    )
    model.train()
    n, b = len(data.color), r.batch_size
    mlm_loss = itm_loss = mismatch_loss = attribute_loss = torch.tensor(float("nan"))
    bar = tqdm(range(steps), desc="Pretraining default ViLT", disable=not progress)
    for _ in bar:
        images = torch.randint(0, n, (2 * b,), generator=generator)
        templates = torch.randint(0, len(CAPTIONS), (2 * b,), generator=generator)
        color, shape = data.color[images], data.shape[images]
        mlm_ids, labels = captions.mask(
            captions.get(templates[:b], color[:b], shape[:b]), color[:b], shape[:b], generator
        )
        match = torch.rand(b, generator=generator) < 0.5
        wrong_color, wrong_shape = _corrupt(color[b:], shape[b:], generator)
        itm_ids = captions.get(
            templates[b:], torch.where(match, color[b:], wrong_color), torch.where(match, shape[b:], wrong_shape)
        )
        texts = torch.cat([mlm_ids, itm_ids])
        mlm_logits, itm_logits, mismatch_logits, attribute_logits = _forward(
            model, heads, texts, data.pixel_values[images], fast=True)
        mlm_loss = nn.functional.cross_entropy(mlm_logits[:b].flatten(0, 1), labels.flatten())
        itm_loss = nn.functional.cross_entropy(itm_logits[b:], match.long())
        words = (itm_ids != 0).float()
        wrong_word = (itm_ids != captions.get(templates[b:], color[b:], shape[b:])).float()
        mismatch_loss = (nn.functional.binary_cross_entropy_with_logits(
            mismatch_logits[b:], wrong_word, reduction="none") * words).sum() / words.sum()
        attribute_loss = (nn.functional.cross_entropy(attribute_logits[:, : len(COLORS)], color)
                          + nn.functional.cross_entropy(attribute_logits[:, len(COLORS):], shape))
        optimizer.zero_grad()
        (mlm_loss + r.itm_weight * itm_loss + r.mismatch_weight * mismatch_loss
         + r.attribute_weight * attribute_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(mlm=f"{mlm_loss.item():.3f}", itm=f"{itm_loss.item():.3f}",
                        mismatch=f"{mismatch_loss.item():.3f}", attributes=f"{attribute_loss.item():.3f}", refresh=False)
    model.eval()
    return {name: round(loss.item(), 4) for name, loss in (
        ("mlm_loss", mlm_loss), ("itm_loss", itm_loss), ("mismatch_loss", mismatch_loss),
        ("attribute_loss", attribute_loss))}


@torch.no_grad()
def _probe(
    model: ViltForMaskedLM, heads: _Heads, data: _ImageSet, captions: _CaptionTable, seed: int
) -> dict[str, float]:
    """Accuracy on unseen images: the masked colour word, the masked shape word (argmax over
    the whole vocabulary) and ITM on one true and one corrupted caption per image."""
    generator = torch.Generator().manual_seed(seed + 1)
    n = len(data.color)
    templates = torch.arange(n) % len(CAPTIONS)
    ids = captions.get(templates, data.color, data.shape)
    wrong_color, wrong_shape = _corrupt(data.color, data.shape, generator)
    wrong_ids = captions.get(templates, wrong_color, wrong_shape)
    color_pos = ids == captions.color_ids[data.color][:, None]
    shape_pos = ids == captions.shape_ids[data.shape][:, None]
    texts = torch.cat([ids.masked_fill(color_pos, captions.mask_id), ids.masked_fill(shape_pos, captions.mask_id),
                       ids, wrong_ids])
    mlm_logits, itm_logits = [], []
    for chunk in torch.split(torch.arange(4 * n), 500):
        m, i, _, _ = _forward(model, heads, texts[chunk], data.pixel_values[chunk % n], fast=False)
        mlm_logits.append(m)
        itm_logits.append(i)
    predicted = torch.cat(mlm_logits).argmax(-1)
    itm = torch.cat(itm_logits).argmax(-1)
    return {
        "probe_color_acc": round((predicted[:n][color_pos] == ids[color_pos]).float().mean().item(), 4),
        "probe_shape_acc": round((predicted[n : 2 * n][shape_pos] == ids[shape_pos]).float().mean().item(), 4),
        "probe_itm_acc": round((itm[2 * n :] == torch.arange(2 * n).lt(n).long()).float().mean().item(), 4),
    }
