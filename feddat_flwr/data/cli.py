"""Make, split and inspect client datasets in the format of feddat_flwr/data/vqa_format.py.

    python -m feddat_flwr.data from-vqa --questions Q.json --annotations A.json --images DIR --out OUT
    python -m feddat_flwr.data from-folder --images DIR --out OUT          # DIR/metadata.jsonl
    python -m feddat_flwr.data split --dataset OUT --partitioner dirichlet --num-partitions 5 --out PARTS
    python -m feddat_flwr.data split --easy-vqa -c preset=function --num-partitions 5 --out PARTS
    python -m feddat_flwr.data describe PARTS

from-vqa reads the official VQA v2 JSON (questions; annotations with ten answers per question)
and an image folder whose file names end in the image id (COCO_train2014_000000000009.jpg, 9.png);
from-folder reads Hugging Face's imagefolder convention: metadata.jsonl rows with file_name,
question and answer or answers. Both embed the image bytes (an `image` column), so the saved
dataset is self-contained. split cuts one saved dataset (or the embedded easy-VQA as a preset
gives it to each client) into partition_<i>/ with the project's partitioners; run with
-c data.path=PARTS. describe prints what a user checks before a run.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, Features, Image, List, Value, load_from_disk
from PIL import Image as PILImage

from feddat_flwr.data.answers import answer_counts
from feddat_flwr.data.partition import PARTITIONERS, partition
from feddat_flwr.data.vqa_format import PARTITION_PREFIX, DataError, partition_dirs, read_split

MULTI_FEATURES = Features({"image": Image(), "question": Value("string"), "answers": List(Value("string")),
                           "question_type": Value("string")})
SINGLE_FEATURES = Features({"image": Image(), "question": Value("string"), "answer": Value("string"),
                            "question_type": Value("string")})


def _image_cell(path: Path) -> dict[str, Any]:
    return {"bytes": path.read_bytes(), "path": path.name}


def _save(ds: Dataset | DatasetDict, out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{str(out)!r} is not empty; choose a new directory so nothing is overwritten.")
    ds.save_to_disk(str(out))


def _images_by_id(folder: Path) -> dict[int, Path]:
    """Image files of `folder` by the number their name ends in (COCO_val2014_000000000042.jpg -> 42)."""
    found = {}
    for p in folder.iterdir():
        if m := re.search(r"(\d+)$", p.stem):
            found[int(m.group(1))] = p
    return found


def from_vqa(questions: Path, annotations: Path, images: Path, out: Path, limit: int = 0) -> Dataset:
    """VQA v2-style JSON -> a dataset with `answers` (all annotators), `question_type`, `image`."""
    qs = json.loads(Path(questions).read_text())["questions"]
    anns = {a["question_id"]: a for a in json.loads(Path(annotations).read_text())["annotations"]}
    files = _images_by_id(Path(images))
    qs = qs[:limit] if limit else qs

    def rows() -> Iterator[dict[str, Any]]:
        for q in qs:
            if q["question_id"] not in anns:
                raise DataError(f"{annotations}: no annotation for question_id {q['question_id']}.")
            if q["image_id"] not in files:
                raise DataError(f"{images}: no image file for image_id {q['image_id']} "
                                f"(question_id {q['question_id']}).")
            ann = anns[q["question_id"]]
            yield {"image": _image_cell(files[q["image_id"]]), "question": q["question"],
                   "answers": [a["answer"] for a in ann["answers"]], "question_type": ann.get("question_type", "")}

    ds = Dataset.from_generator(rows, features=MULTI_FEATURES)
    _save(ds, out)
    return ds


def from_folder(images: Path, out: Path) -> Dataset:
    """An image folder with metadata.jsonl (file_name, question, answer | answers[, question_type])."""
    images = Path(images)
    metadata = images / "metadata.jsonl"
    if not metadata.is_file():
        raise DataError(f"{str(metadata)!r} does not exist (one JSON object a line: file_name, question, answer).")
    entries = []
    for n, line in enumerate(metadata.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entries.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{metadata}:{n}: not JSON ({exc}).") from None
    if not entries:
        raise DataError(f"{metadata} has no rows.")
    multi = "answers" in entries[0][1]
    need = ("file_name", "question", "answers" if multi else "answer")
    for n, row in entries:
        missing = [k for k in need if k not in row]
        if missing:
            raise DataError(f"{metadata}:{n}: missing {missing} (every row needs {list(need)}; "
                            "use `answers` in every row or in none).")
        if not (images / row["file_name"]).is_file():
            raise DataError(f"{metadata}:{n}: image file {row['file_name']!r} not found in {images}.")

    def rows() -> Iterator[dict[str, Any]]:
        for _, row in entries:
            answer = {"answers": list(row["answers"])} if multi else {"answer": row["answer"]}
            yield {"image": _image_cell(images / row["file_name"]), "question": row["question"], **answer,
                   "question_type": str(row.get("question_type", ""))}

    ds = Dataset.from_generator(rows, features=MULTI_FEATURES if multi else SINGLE_FEATURES)
    _save(ds, out)
    return ds


def split_dataset(source: Path, out: Path, *, partitioner: str, num_partitions: int, seed: int, alpha: float,
                  by: str | None) -> list[Path]:
    """A saved dataset -> out/partition_<i>/ (the same rule on train and test of a DatasetDict).
    Multi-answer rows are partitioned by their most frequent answer (`answer`, added for this)."""
    loaded = load_from_disk(str(source))
    splits = dict(loaded) if isinstance(loaded, DatasetDict) else {"": loaded}
    multi = "answers" in next(iter(splits.values())).column_names
    if multi:  # the partitioners need one class per row
        splits = {name: ds.add_column("answer", [max(sorted(set(a)), key=a.count) for a in ds["answers"]])
                  for name, ds in splits.items()}
    paths = []
    for i in range(num_partitions):
        parts = {name: partition(ds, partitioner=partitioner, num_partitions=num_partitions, partition_id=i,
                                 seed=seed, dirichlet_alpha=alpha, partition_by=by, split=name or "dataset")
                 for name, ds in splits.items()}
        if multi:
            parts = {k: v.remove_columns("answer") for k, v in parts.items()}
        path = Path(out) / f"{PARTITION_PREFIX}{i}"
        _save(DatasetDict(parts) if "" not in parts else parts[""], path)
        paths.append(path)
    return paths


def export_easyvqa(run_config: dict[str, Any], num_partitions: int, out: Path) -> list[Path]:
    """What the embedded easy-VQA path gives each client under `run_config` (preset, partitioner,
    views, caps, seed), written as client datasets: a run on them with data.path=out equals the
    built-in run. The validation hold-out is left to the run (data.validation-fraction)."""
    from feddat_flwr.config import load_config
    from feddat_flwr.data.client_data import DataSpec, easyvqa_rows

    cfg = load_config({**run_config, "data.validation-fraction": 0.0})
    paths = []
    for i in range(num_partitions):
        train, test, transform = easyvqa_rows(DataSpec.from_config(cfg, i, num_partitions))
        path = Path(out) / f"{PARTITION_PREFIX}{i}"
        _save(DatasetDict({"train": _materialise(train, transform), "test": _materialise(test, transform)}), path)
        paths.append(path)
    return paths


def _materialise(rows: Dataset, transform) -> Dataset:
    def image(path: str) -> PILImage.Image:
        with PILImage.open(path) as f:
            rgb = f.convert("RGB")
        return transform(rgb) if transform is not None else rgb

    return Dataset.from_dict({"image": [image(p) for p in rows["image_path"]], "question": rows["question"],
                              "answer": rows["answer"], "question_type": rows["question_type"]},
                             features=SINGLE_FEATURES)


def describe(root: Path) -> str:
    """Per client dataset: rows, answers, the most frequent ones, image sizes (a markdown table)."""
    root = Path(root)
    dirs = partition_dirs(root) if not (root / "dataset_info.json").exists() and not (
        root / "dataset_dict.json").exists() else [root]
    lines = ["| dataset | split | rows | answers | multi-answer | top answers | image sizes (min / median / max) |",
             "|---|---|---|---|---|---|---|"]
    for path in dirs:
        loaded = load_from_disk(str(path))
        for name, ds in (dict(loaded) if isinstance(loaded, DatasetDict) else {"all": loaded}).items():
            split = read_split(ds, path, name)
            counts = answer_counts(split.answers)
            top = ", ".join(f"{a} ({n})" for a, n in counts.most_common(5))
            sizes = _image_sizes(ds, path)
            size_text = " / ".join(f"{w}x{h}" for w, h in (sizes[0], sizes[len(sizes) // 2], sizes[-1]))
            lines.append(f"| {path.name} | {name} | {len(ds)} | {len(counts)} | {'answers' in ds.column_names} | "
                         f"{top} | {size_text} |")
    return "\n".join(lines)


def _image_sizes(ds: Dataset, root: Path) -> list[tuple[int, int]]:
    """(width, height) of every image, from its header, sorted by area."""
    if "image" in ds.column_names:
        cells = ds.cast_column("image", Image(decode=False))["image"]
        opened = (PILImage.open(io.BytesIO(c["bytes"])) if c.get("bytes") else PILImage.open(c["path"]) for c in cells)
    else:
        opened = (PILImage.open(p if Path(p).is_absolute() else root / p) for p in ds["image_path"])
    sizes = []
    for image in opened:
        with image:
            sizes.append(image.size)
    return sorted(sizes, key=lambda s: (s[0] * s[1], s))


def main(argv: list[str] | None = None) -> int:
    from feddat_flwr.tools.cli import add_overrides

    parser = argparse.ArgumentParser(prog="python -m feddat_flwr.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("from-vqa", help="official VQA v2-style JSON + image folder -> a saved dataset")
    p.add_argument("--questions", type=Path, required=True)
    p.add_argument("--annotations", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--limit", type=int, default=0, help="only the first N questions (0: all)")
    p.add_argument("--out", type=Path, required=True)
    p = commands.add_parser("from-folder", help="image folder with metadata.jsonl -> a saved dataset")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = commands.add_parser("split", help="one saved dataset (or easy-VQA) -> partition_<i>/ client datasets")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", type=Path, help="a saved Dataset or DatasetDict(train, test)")
    source.add_argument("--easy-vqa", action="store_true", help="the embedded easy-VQA as the run config gives it")
    p.add_argument("--num-partitions", type=int, required=True)
    p.add_argument("--partitioner", choices=PARTITIONERS, default="iid")
    p.add_argument("--by", help="class column: dirichlet's (default answer), question-type's (default question_type)")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    p.add_argument("--seed", type=int, default=42)
    add_overrides(p, "with --easy-vqa: run-config override (preset, caps, seed ...), repeatable")
    p.add_argument("--out", type=Path, required=True)
    p = commands.add_parser("describe", help="rows, answers, top answers and image sizes per client dataset")
    p.add_argument("path", type=Path, help="a saved dataset or a directory of partition_<i>/")
    args = parser.parse_args(argv)
    try:
        if args.command == "from-vqa":
            ds = from_vqa(args.questions, args.annotations, args.images, args.out, args.limit)
            print(f"{len(ds)} questions -> {args.out}")
        elif args.command == "from-folder":
            ds = from_folder(args.images, args.out)
            print(f"{len(ds)} rows -> {args.out}")
        elif args.command == "split" and args.easy_vqa:
            paths = export_easyvqa(dict(args.config), args.num_partitions, args.out)
            print(f"{len(paths)} client datasets -> {args.out}")
        elif args.command == "split":
            paths = split_dataset(args.dataset, args.out, partitioner=args.partitioner,
                                  num_partitions=args.num_partitions, seed=args.seed, alpha=args.alpha, by=args.by)
            print(f"{len(paths)} client datasets -> {args.out}")
        else:
            print(describe(args.path))
    except (DataError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
