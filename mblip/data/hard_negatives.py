"""Hard negatives for caption matching: for each image, captions that a CLIP model finds close but that belong to
other images.

    python -m mblip.data.hard_negatives --captions captions.jsonl --image_root images/ \\
        --model openai/clip-vit-large-patch14 --output negatives/

then ``python -m mblip.data.tasks --source matching --captions captions.jsonl --negatives negatives/negatives.jsonl``.

The official mining (``data/pretrain/hard_examples.py``) embedded every caption with an image-text model (open_clip
ViT-L-14, DataComp-XL), searched each image's embedding against them with faiss, and offered the captions at ranks 3,
10, 30, 100 and 300 (1-based) as negatives, next to a random caption. ``--neighbours captions`` does that (with any
transformers ``CLIPModel``, and without the image's own captions, which the official search could return);
``--neighbours images`` ranks the other images by image-image similarity and takes each one's first caption.

Built for millions of images: each distinct image and caption is embedded once, in shards written atomically with a
done marker (``embeddings/``), then searched shard by shard (``neighbours/``). A killed run restarted with the same
command skips every finished shard; other settings in the same output directory are refused. Images that cannot be
opened are skipped and counted (``--max_bad_rows``), never replaced.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mblip.images import ImageDecodeError, open_image
from mblip.outputs import (
    atomic_write_json,
    check_or_write_run_config,
    mark_done,
    read_done,
    remove_stale_temporaries,
    save_array,
    write_jsonl,
)

from .inputs import input_fingerprint
from .tasks import read_captions


logger = logging.getLogger(__name__)

OFFICIAL_RANKS = (3, 10, 30, 100, 300)
NEIGHBOURS = ("captions", "images")
SEARCHES = ("auto", "faiss", "torch")


@dataclass
class HardNegativeArguments:
    captions: str = field(metadata={"help": "Captions: COCO or Karpathy json, or rows with image_id and caption."})
    image_root: str = field(metadata={"help": "Folder the image paths are relative to."})
    model: str = field(metadata={"help": "A CLIP checkpoint (transformers CLIPModel): Hub id or folder."})
    output: str = field(metadata={"help": "Output folder: embeddings/, neighbours/, negatives.jsonl."})
    image_column: str = field(default="image_id", metadata={"help": "Image column of caption rows."})
    caption_column: str = field(default="caption", metadata={"help": "Caption column of caption rows."})
    neighbours: str = field(
        default="captions",
        metadata={"help": "captions: image vs caption embeddings (official); images: image vs image embeddings."},
    )
    ranks: list[int] = field(
        default_factory=lambda: list(OFFICIAL_RANKS),
        metadata={"help": "1-based neighbour ranks whose captions become negatives (official: 3 10 30 100 300)."},
    )
    search: str = field(default="auto", metadata={"help": "Nearest-neighbour search: faiss, torch, or auto."})
    batch_size: int = field(default=64, metadata={"help": "Images or captions per forward pass."})
    shard_size: int = field(default=10_000, metadata={"help": "Images (captions) per shard, the unit of resumption."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ... (default: cuda when available)."})
    max_bad_rows: float = field(default=0.01, metadata={"help": "Fail when more than this share of images fails."})
    overwrite: bool = field(default=False, metadata={"help": "Start over instead of resuming."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        if self.neighbours not in NEIGHBOURS:
            raise ValueError(f"--neighbours must be one of {', '.join(NEIGHBOURS)}, got {self.neighbours!r}.")
        if self.search not in SEARCHES:
            raise ValueError(f"--search must be one of {', '.join(SEARCHES)}, got {self.search!r}.")
        if not self.ranks or min(self.ranks) < 1:
            raise ValueError(f"--ranks are 1-based neighbour ranks, got {self.ranks}.")
        for name in ("batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if not 0 <= self.max_bad_rows <= 1:
            raise ValueError(f"--max_bad_rows is a fraction in [0, 1], got {self.max_bad_rows}.")


# Options that do not change the output.
RESUME_INSENSITIVE = {"batch_size", "device", "progress", "max_bad_rows", "overwrite", "search", "output"}


# ================================================================================================================
# Encoder
# ================================================================================================================


def _features(output) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding; older versions a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipEncoder:
    """L2-normalised CLIP image and text embeddings (float32 numpy), batched, without autograd."""

    def __init__(self, model, image_processor, tokenizer=None, batch_size: int = 64):
        self.model = model.eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = getattr(model.config.text_config, "max_position_embeddings", 77)

    @classmethod
    def from_pretrained(cls, name_or_path: str, device=None, need_text: bool = True, batch_size: int = 64):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        from mblip.loading import choose_device

        model = CLIPModel.from_pretrained(name_or_path).to(choose_device(device))
        tokenizer = AutoTokenizer.from_pretrained(name_or_path) if need_text else None
        return cls(model, AutoImageProcessor.from_pretrained(name_or_path), tokenizer, batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def images(self, images: Sequence) -> np.ndarray:
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = [image.convert("RGB") for image in images[start : start + self.batch_size]]
            pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            out.append(self._normalise(_features(self.model.get_image_features(pixel_values=pixels))))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @torch.inference_mode()
    def texts(self, texts: Sequence[str]) -> np.ndarray:
        if self.tokenizer is None:
            raise ValueError("This encoder has no tokenizer: --neighbours captions needs one.")
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            out.append(self._normalise(_features(self.model.get_text_features(**inputs))))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @property
    def dim(self) -> int:
        return self.model.config.projection_dim

    @staticmethod
    def _normalise(features: torch.Tensor) -> np.ndarray:
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()


# ================================================================================================================
# Nearest neighbours
# ================================================================================================================


def search_faiss(index_vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search (cosine on normalised vectors): (scores, ids), ids -1 past the end."""
    import faiss

    index = faiss.IndexFlatIP(index_vectors.shape[1])
    index.add(np.ascontiguousarray(index_vectors, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(index_vectors)))


def search_torch(
    index_vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """The same with a matrix product and torch.topk, ``chunk`` queries at a time."""
    index = torch.from_numpy(np.ascontiguousarray(index_vectors, dtype=np.float32))
    k = min(k, len(index))
    scores, ids = [], []
    for start in range(0, len(queries), chunk):
        sims = torch.from_numpy(np.ascontiguousarray(queries[start : start + chunk], dtype=np.float32)) @ index.T
        top = torch.topk(sims, k, dim=1)
        scores.append(top.values.numpy())
        ids.append(top.indices.numpy())
    if not scores:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(scores), np.concatenate(ids)


def get_search(name: str) -> Callable:
    if name == "torch":
        return search_torch
    try:
        import faiss  # noqa: F401
    except ImportError:
        if name == "faiss":
            raise ValueError("--search faiss needs faiss: pip install faiss-cpu") from None
        return search_torch
    return search_faiss


# ================================================================================================================
# The run
# ================================================================================================================


@dataclass
class CaptionTable:
    """Distinct images in first-appearance order, distinct (image, caption) pairs, and which image owns each."""

    images: list[str]
    captions: list[str]
    owner: np.ndarray  # caption -> image index
    first_caption: np.ndarray  # image -> index of its first caption

    @classmethod
    def build(cls, pairs: Sequence[tuple[str, str]]) -> CaptionTable:
        image_index: dict[str, int] = {}
        seen, captions, owner = set(), [], []
        for image, caption in pairs:
            i = image_index.setdefault(image, len(image_index))
            if (image, caption) in seen:
                continue
            seen.add((image, caption))
            captions.append(caption)
            owner.append(i)
        owner = np.asarray(owner, dtype=np.int64)
        first = np.full(len(image_index), -1, dtype=np.int64)
        for c in range(len(owner) - 1, -1, -1):
            first[owner[c]] = c
        return cls(list(image_index), captions, owner, first)


def _shards(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _embed_images(out: Path, table: CaptionTable, args: HardNegativeArguments, encoder_factory, bar) -> dict:
    """Image embeddings per shard; returns the bad images {index: reason}."""
    bad: dict[int, str] = {}
    for k, (start, end) in enumerate(_shards(len(table.images), args.shard_size)):
        name = out / "embeddings" / f"images-{k:05d}"
        done = read_done(f"{name}.done.json", {"start": start, "end": end})
        if done is None:
            images, ok = [], []
            for i in range(start, end):
                try:
                    images.append(open_image(os.path.join(args.image_root, table.images[i])))
                    ok.append(i)
                except ImageDecodeError as error:
                    bad[i] = f"{error.kind}: {error}"
            encoder = encoder_factory()
            vectors = np.zeros((end - start, encoder.dim), np.float32)
            if images:
                vectors[np.asarray(ok) - start] = encoder.images(images)
            save_array(f"{name}.npy", vectors)
            done = {"start": start, "end": end, "bad": {str(i): reason for i, reason in bad.items() if i >= start}}
            mark_done(f"{name}.done.json", done)
        bad.update({int(i): reason for i, reason in done["bad"].items()})
        bar.update(end - start)
    return bad


def _embed_texts(out: Path, table: CaptionTable, args: HardNegativeArguments, encoder_factory, bar) -> None:
    for k, (start, end) in enumerate(_shards(len(table.captions), args.shard_size)):
        name = out / "embeddings" / f"texts-{k:05d}"
        if read_done(f"{name}.done.json", {"start": start, "end": end}) is None:
            save_array(f"{name}.npy", encoder_factory().texts(table.captions[start:end]))
            mark_done(f"{name}.done.json", {"start": start, "end": end})
        bar.update(end - start)


def _load_shards(out: Path, prefix: str, n: int, size: int) -> np.ndarray:
    return np.concatenate([np.load(out / "embeddings" / f"{prefix}-{k:05d}.npy") for k in range(len(_shards(n, size)))])


def mine_hard_negatives(args: HardNegativeArguments, encoder: ClipEncoder | None = None) -> dict:
    """Run the mining; returns the report (also written to ``report.json``). ``encoder`` replaces ``--model``."""
    from tqdm.auto import tqdm

    out = Path(args.output)
    for sub in ("embeddings", "neighbours"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out / sub)
    if args.overwrite:
        for sub in ("embeddings", "neighbours"):
            for path in (out / sub).iterdir():
                path.unlink()
        (out / "run_config.json").unlink(missing_ok=True)
    table = CaptionTable.build(read_captions(args.captions, args.image_column, args.caption_column))
    if not table.images:
        raise ValueError(f"{args.captions} holds no captions.")
    config = {k: v for k, v in asdict(args).items() if k not in RESUME_INSENSITIVE}
    config.pop("image_root")  # folders may move between a run and its resumption; the captions' content may not
    config["captions"] = input_fingerprint(args.captions)
    check_or_write_run_config(out / "run_config.json", config, args.overwrite, overwrite_flag="--overwrite")

    state = {"encoder": encoder}

    def encoder_factory() -> ClipEncoder:  # loaded only when a shard is left to embed
        if state["encoder"] is None:
            state["encoder"] = ClipEncoder.from_pretrained(
                args.model, args.device, need_text=args.neighbours == "captions", batch_size=args.batch_size
            )
        return state["encoder"]

    # ---- embeddings ----------------------------------------------------------------------------------------------
    n_images, n_captions = len(table.images), len(table.captions)
    with tqdm(total=n_images, desc="images", unit="img", disable=not args.progress) as bar:
        bad = _embed_images(out, table, args, encoder_factory, bar)
    if len(bad) / n_images > args.max_bad_rows:
        examples = "; ".join(f"{table.images[i]} ({reason})" for i, reason in list(bad.items())[:5])
        raise ValueError(
            f"{len(bad)} of {n_images} images could not be opened, more than --max_bad_rows={args.max_bad_rows}: "
            f"{examples}. Check --image_root."
        )
    image_vectors = _load_shards(out, "images", n_images, args.shard_size)
    usable = np.ones(n_images, dtype=bool)
    usable[list(bad)] = False
    if args.neighbours == "captions":
        with tqdm(total=n_captions, desc="captions", unit="cap", disable=not args.progress) as bar:
            _embed_texts(out, table, args, encoder_factory, bar)
        index_vectors = _load_shards(out, "texts", n_captions, args.shard_size)
        index_owner = table.owner
        index_rows = np.flatnonzero(usable[table.owner])  # captions of unusable images are not offered either
    else:
        index_vectors, index_owner = image_vectors, np.arange(n_images)
        index_rows = np.flatnonzero(usable)

    # ---- search --------------------------------------------------------------------------------------------------
    depth = max(args.ranks)
    per_owner = np.bincount(index_owner[index_rows], minlength=n_images).max() if len(index_rows) else 0
    search = get_search(args.search)
    searchable = index_vectors[index_rows]
    shards = _shards(n_images, args.shard_size)
    with tqdm(total=n_images, desc="search", unit="img", disable=not args.progress) as bar:
        for k, (start, end) in enumerate(shards):
            name = out / "neighbours" / f"shard-{k:05d}"
            if read_done(f"{name}.done.json", {"start": start, "end": end}) is None:
                # Search deep enough that dropping the query's own captions (or itself) still leaves `depth`.
                _, found = search(searchable, image_vectors[start:end], depth + int(per_owner))
                ids = np.full((end - start, depth), -1, dtype=np.int64)
                for row, hits in enumerate(found):
                    hits = index_rows[hits[hits >= 0]]
                    hits = hits[index_owner[hits] != start + row][:depth]
                    ids[row, : len(hits)] = hits
                save_array(f"{name}.npy", ids)
                mark_done(f"{name}.done.json", {"start": start, "end": end})
            bar.update(end - start)

    # ---- negatives.jsonl -----------------------------------------------------------------------------------------
    def rows():
        for k, (start, _) in enumerate(shards):
            ids = np.load(out / "neighbours" / f"shard-{k:05d}.npy")
            for row, neighbours in enumerate(ids):
                i = start + row
                if not usable[i]:
                    continue
                picked = [int(neighbours[r - 1]) for r in args.ranks if r <= depth and neighbours[r - 1] >= 0]
                if args.neighbours == "images":
                    picked = [int(table.first_caption[j]) for j in picked]
                yield {"image_id": table.images[i], "negatives": [table.captions[c] for c in picked]}

    written = write_jsonl(out / "negatives.jsonl", rows())
    report = {
        "images": n_images,
        "captions": n_captions,
        "bad_images": {"count": len(bad), "examples": {table.images[i]: r for i, r in list(bad.items())[:5]}},
        "written": written,
        "neighbours": args.neighbours,
        "ranks": list(args.ranks),
        "shards": len(shards),
    }
    atomic_write_json(out / "report.json", report)
    logger.info("Wrote negatives for %d of %d images to %s.", written, n_images, out / "negatives.jsonl")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    from mblip.arguments import parse_args, run_command

    def mine() -> None:
        (args,) = parse_args(
            (HardNegativeArguments,), argv, prog="python -m mblip.data.hard_negatives", description=__doc__
        )
        mine_hard_negatives(args)

    return run_command(mine, logger)


if __name__ == "__main__":
    sys.exit(main())
