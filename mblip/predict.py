r"""Images (a list, a folder, a JSONL of image/prompt pairs, a `datasets` dataset) plus a prompt in, text out, batched.

    # Caption a folder in German, 8 images per batch, into a JSONL file
    python predict.py --model outputs/demo/mblip --image_dir photos/ --prompt "Caption the image in German." \
        --batch_size 8 --output preds.jsonl

    # The same prompt built from a language code or name; results printed to stdout as JSON lines
    python predict.py --model Gregor/mblip-mt0-xl --images cat.jpg street.png --lang de

    # A prompt per image (JSONL): {"image": "cat.jpg", "prompt": "Question: ... Short answer in French:"}
    python predict.py --prompts_file questions.jsonl --num_beams 5 --max_new_tokens 10 --output answers.jsonl

    # A `datasets` dataset in any form: an imagefolder, parquet with embedded images, webdataset shards, a Hub id
    python predict.py --dataset_name photos_with_metadata/ --image_column image --lang de --output preds.jsonl
    python predict.py --data_files "shards/*.tar" --image_column jpg --prompt_column json.prompt --output preds.jsonl

    # An 8-bit LLM (bitsandbytes), bf16 vision stack, on the GPU when there is one
    python predict.py --model Gregor/mblip-mt0-xl --image_dir photos/ --lang fr --load_in_8bit --dtype bfloat16

--model defaults to outputs/demo/mblip, the model the offline demo (`python train_mblip.py`) trains. Every output row
is {"image": path, "prompt": prompt, "text": generated text}, one JSON object per line, in input order (a folder is
read in sorted path order; --recursive descends into subfolders).

Output and resume (mblip/outputs.py): rows are appended to OUTPUT.partial as each batch finishes, and OUTPUT.partial
is renamed to OUTPUT when the run completes, so OUTPUT only ever holds a finished run. Rerunning the same command
after a crash or Ctrl-C resumes from OUTPUT.partial: (image, prompt) pairs already there are skipped, and a last line
cut by the kill is dropped and predicted again. OUTPUT.settings.json (beside it) records the job: the model (its
config and weight files), dtype and quantization, the decoding settings and the list of (image, prompt) pairs; a
partial file of another job is refused with the differences. An existing OUTPUT is never replaced unless
--overwrite, which also discards a partial file.

Unreadable images (corrupt or truncated files, files PIL cannot decode, --prompts_file rows naming missing files)
are skipped, counted and named in the log; they are never replaced by blank images. When more than
--max_bad_rows of all the images (resumed ones included) were unreadable, the run exits with status 1
and its output stays in OUTPUT.partial, so that rerunning with the files fixed (or with a higher threshold) only
does what is left. Files in --image_dir without an image extension (notes.txt) are not images: they are counted
and named, and do not count as unreadable; hidden files (.DS_Store) are ignored. A missing --images file is an error.
"""

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import set_seed

from mblip.arguments import MBlipArgumentParser
from mblip.bad_rows import BadRows, check_threshold
from mblip.data.languages import LANGUAGES as LANGUAGE_TABLE
from mblip.data.languages import get_language
from mblip.images import ImageDecodeError, open_image
from mblip.loading import DTYPE_HELP, DTYPES, load_for_inference
from mblip.modeling_mblip import MBlipForConditionalGeneration
from mblip.outputs import ResumableJsonl, model_identity
from mblip.processing_mblip import MBlipProcessor
from mblip.prompts import CAPTION_TEMPLATE, DEFAULT_PROMPT
from mblip.training_data import (
    ImageValueError,
    get_field,
    image_sources,
    inference_name,
    load_dataset_for_inference,
    resolve_column,
)


logger = logging.getLogger("predict")

DEFAULT_MODEL = "outputs/demo/mblip"

# mBLIP's 95 training languages plus English, code -> the English name its prompts use (data/languages.py's table).
LANGUAGES = {language.code: language.name for language in LANGUAGE_TABLE}


class PredictError(Exception):
    """A problem with the user's input, reported as one line."""


# ---------------------------------------------------------------------------------------------------- languages
def language_name(code_or_name: str) -> str:
    """'de', 'DE' or 'german' -> 'German'; anything else is an error that says how to list the choices."""
    key = code_or_name.strip().lower()
    try:
        return get_language(key).name
    except ValueError:
        pass
    by_name = {name.lower(): name for name in LANGUAGES.values()}
    if key in by_name:
        return by_name[key]
    raise ValueError(
        f"--lang {code_or_name!r} is not one of mBLIP's {len(LANGUAGES)} languages; use an ISO code or English "
        f"name such as de/German, fr/French, zh/Chinese (see predict.LANGUAGES), or write the prompt with --prompt"
    )


def caption_prompt(language: str) -> str:
    return CAPTION_TEMPLATE.format(language=language_name(language))


# ---------------------------------------------------------------------------------------------------- arguments
@dataclass
class PredictArguments:
    model: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "mBLIP model folder or Hub id; the default is the offline demo's (python train_mblip.py)."},
    )
    images: list[str] | None = field(default=None, metadata={"help": "Image files, in the order given."})
    image_dir: str | None = field(default=None, metadata={"help": "A folder of images, read in sorted path order."})
    recursive: bool = field(default=False, metadata={"help": "With --image_dir: include subfolders."})
    prompts_file: str | None = field(
        default=None,
        metadata={
            "help": 'JSONL rows {"image": path, "prompt": text} (a prompt per image; paths relative to the file). '
            "Rows without a prompt get --prompt / --lang. Predictions are in the same format, plus 'text'."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Predict on a `datasets` dataset instead: a Hub id or a local folder (imagefolder with "
            "metadata.jsonl, parquet or webdataset shards, a save_to_disk folder)."
        },
    )
    data_files: str | None = field(
        default=None,
        metadata={"help": "Or data files (commas or globs) of any format datasets infers: parquet, jsonl, .tar, ..."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "--dataset_name's configuration."})
    dataset_split: str | None = field(default=None, metadata={"help": "Split to predict on (default: the only one)."})
    image_column: str = field(
        default="image",
        metadata={
            "help": "With --dataset_name / --data_files: the image column (paths relative to --image_root, an Image() "
            "column, {bytes, path} records or bytes; dots reach nested fields)."
        },
    )
    prompt_column: str | None = field(
        default=None, metadata={"help": "With --dataset_name / --data_files: a column of prompts, one per row."}
    )
    image_root: str = field(default=".", metadata={"help": "Folder a dataset's image paths are relative to."})
    prompt: str | None = field(
        default=None, metadata={"help": f"The prompt for every image. Default: {DEFAULT_PROMPT!r}."}
    )
    lang: str | None = field(
        default=None,
        metadata={"help": f"Shortcut for --prompt {CAPTION_TEMPLATE!r}: an ISO code (de) or English name (German)."},
    )
    output: str | None = field(
        default=None, metadata={"help": "JSONL file to write (resumable, see above). Default: JSON lines on stdout."}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Replace an existing --output and discard its partial file."}
    )
    batch_size: int = field(default=8, metadata={"help": "Images per generate call."})
    max_new_tokens: int = field(default=30, metadata={"help": "Most tokens generated per image."})
    num_beams: int = field(default=5, metadata={"help": "Beam-search width; 1 is greedy (or plain sampling)."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of searching."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (needs --do_sample)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus-sampling mass in (0, 1] (needs --do_sample)."})
    length_penalty: float = field(default=1.0, metadata={"help": "Beam-search length penalty (<0 favours short)."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "> 1 discourages repeated tokens."})
    seed: int = field(default=42, metadata={"help": "Random seed (matters for --do_sample)."})
    dtype: str = field(default="auto", metadata={"help": f"Weights' dtype, one of {sorted(DTYPES)}; {DTYPE_HELP}."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Quantize the LLM to 8 bits with bitsandbytes."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Quantize the LLM to 4-bit NF4 with bitsandbytes."})
    device: str | None = field(default=None, metadata={"help": "cuda, cuda:1, cpu, ... Default: cuda if available."})
    max_bad_rows: float = field(
        default=0.1,
        metadata={
            "help": "Exit with status 1 when more than this fraction of the images could not be read.",
            "aliases": ["--max_unreadable_fraction"],  # its name before 0.3, deprecated
        },
    )

    def __post_init__(self):
        sources = {
            "images": self.images,
            "image_dir": self.image_dir,
            "prompts_file": self.prompts_file,
            "dataset_name": self.dataset_name,
            "data_files": self.data_files,
        }
        given = [f"--{name}" for name, value in sources.items() if value]
        if len(given) != 1:
            raise ValueError(
                "Pass exactly one of --images FILE..., --image_dir DIR, --prompts_file FILE, --dataset_name NAME or "
                f"--data_files FILES (got {', '.join(given) if given else 'none'})"
            )
        if self.recursive and not self.image_dir:
            raise ValueError("--recursive only applies to --image_dir")
        if self.prompt is not None and self.lang is not None:
            raise ValueError(f"Pass --prompt or --lang, not both (got prompt={self.prompt!r}, lang={self.lang!r})")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("--prompt is empty; leave it out for the default caption prompt")
        if self.lang is not None:
            language_name(self.lang)  # fails early, before the model is loaded
        for name in ("batch_size", "max_new_tokens", "num_beams"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"--repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not self.do_sample and (self.temperature != 1.0 or self.top_p != 1.0):
            # transformers would silently ignore them; a user who sets them expects sampling.
            raise ValueError(
                f"--temperature {self.temperature} / --top_p {self.top_p} only apply with --do_sample; add --do_sample "
                "or drop them"
            )
        if self.load_in_8bit and self.load_in_4bit:
            raise ValueError("Pass --load_in_8bit or --load_in_4bit, not both")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        check_threshold(self.max_bad_rows)
        if self.overwrite and not self.output:
            raise ValueError("--overwrite only applies to --output")
        if self.output and Path(self.output).is_dir():
            raise ValueError(f"--output {self.output!r} is a folder; expected a .jsonl file path")

    @property
    def default_prompt(self) -> str:
        if self.prompt is not None:
            return self.prompt
        return caption_prompt(self.lang) if self.lang is not None else DEFAULT_PROMPT

    def generation_kwargs(self) -> dict:
        kwargs = dict(
            max_new_tokens=self.max_new_tokens,
            num_beams=self.num_beams,
            do_sample=self.do_sample,
            length_penalty=self.length_penalty,
            repetition_penalty=self.repetition_penalty,
        )
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs


# ---------------------------------------------------------------------------------------------------- model
def resolve_model(model: str) -> str:
    """A model folder, or a Hub id left for from_pretrained; the missing demo model gets a one-line hint."""
    path = Path(model)
    if path.is_dir():
        return model
    if model == DEFAULT_MODEL:
        raise PredictError(
            f"No model at the default {DEFAULT_MODEL} (relative to {Path.cwd()}): train the demo model first with "
            "`python train_mblip.py`, or pass --model DIR_OR_HUB_ID"
        )
    if path.exists():
        raise PredictError(f"--model {model!r} is a file; expected a model folder or a Hub id")
    return model


def load_model(
    model: str = DEFAULT_MODEL,
    dtype: str = "auto",
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    device: str | None = None,
) -> tuple[MBlipForConditionalGeneration, MBlipProcessor]:
    """mblip.loading.load_for_inference, after resolve_model's hint for the missing demo model."""
    return load_for_inference(resolve_model(model), dtype, load_in_8bit, load_in_4bit, device)


@torch.inference_mode()
def generate_texts(model, processor, images: list, prompts: list[str], **generation_kwargs) -> list[str]:
    """One batched generate call; the decoded new text of each image, stripped."""
    inputs = processor(images=images, text=prompts).to(model.device)
    output = model.generate(**inputs, **generation_kwargs)
    return [text.strip() for text in processor.batch_decode(output, skip_special_tokens=True)]


# ---------------------------------------------------------------------------------------------------- inputs
@dataclass
class Item:
    image: str  # a path, or how the output names a dataset row's image
    prompt: str
    source: object = None  # for dataset rows: a callable returning what open_image takes (read when it is opened)


def image_extensions() -> set[str]:
    from PIL import Image

    Image.init()  # registers every plugin, so that e.g. .webp and .tiff count as images
    return {ext.lower() for ext in Image.registered_extensions()}


def list_image_dir(image_dir: str, recursive: bool) -> tuple[list[str], list[str]]:
    """(image paths, other files), both sorted; hidden files are neither."""
    root = Path(image_dir)
    if not root.is_dir():
        raise PredictError(f"--image_dir {image_dir!r} is not a folder")
    extensions = image_extensions()
    files = sorted(p for p in (root.rglob("*") if recursive else root.iterdir()) if p.is_file())
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    images = [str(p) for p in files if p.suffix.lower() in extensions]
    others = [str(p) for p in files if p.suffix.lower() not in extensions]
    return images, others


def read_prompts_file(prompts_file: str, default_prompt: str) -> list[Item]:
    path = Path(prompts_file)
    if not path.is_file():
        raise PredictError(f"--prompts_file {prompts_file!r} is not a file")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PredictError(f"--prompts_file {prompts_file!r} line {number} is not JSON ({err})") from None
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            expected = '{"image": path, "prompt": text}'
            raise PredictError(f"--prompts_file {prompts_file!r} line {number} needs {expected}, got {line[:80]!r}")
        prompt = row.get("prompt", default_prompt)
        if not isinstance(prompt, str) or not prompt.strip():
            raise PredictError(f"--prompts_file {prompts_file!r} line {number} has an empty or non-text prompt")
        image = row["image"] if os.path.isabs(row["image"]) else str(path.parent / row["image"])
        items.append(Item(image, prompt))
    if not items:
        raise PredictError(f"--prompts_file {prompts_file!r} holds no rows")
    return items


def collect_items(args: PredictArguments) -> tuple[list[Item], list[str]]:
    """What to predict, in order, and the --image_dir files that are not images."""
    if args.prompts_file:
        return read_prompts_file(args.prompts_file, args.default_prompt), []
    if args.dataset_name or args.data_files:
        return read_dataset(args), []
    if args.image_dir:
        images, others = list_image_dir(args.image_dir, args.recursive)
        if not images:
            raise PredictError(f"--image_dir {args.image_dir!r} holds no image files ({len(others)} other files)")
    else:
        images, others = args.images, []
        missing = [image for image in images if not Path(image).is_file()]
        if missing:
            raise PredictError(
                f"--images: {len(missing)} of {len(images)} files do not exist: {', '.join(missing[:5])}"
            )
    return [Item(image, args.default_prompt) for image in images], others


def read_dataset(args: PredictArguments) -> list[Item]:
    """A `datasets` dataset's rows in order, in any form of image column (mblip/training_data.py; a row holding a list
    of images is predicted on its first); each image is read again only when its batch is predicted."""
    dataset, split = load_dataset_for_inference(
        args.dataset_name, args.dataset_config_name, args.dataset_split, args.data_files, args.image_column
    )
    for name in filter(None, (args.image_column, args.prompt_column)):
        resolve_column(dataset.column_names, name, f"The {split} split")
    images = dataset.select_columns([resolve_column(dataset.column_names, args.image_column)])
    columns = [c for c in {args.image_column, args.prompt_column} if c]
    tops = sorted({resolve_column(dataset.column_names, c) for c in columns})
    items = []
    for index, batch in enumerate(dataset.select_columns(tops).iter(batch_size=1000)):
        for offset in range(len(batch[tops[0]])):
            row = index * 1000 + offset
            record = {top: batch[top][offset] for top in tops}
            value = get_field(record, args.image_column, None)
            prompt = get_field(record, args.prompt_column, None) if args.prompt_column else None
            prompt = str(prompt) if prompt is not None and str(prompt).strip() else args.default_prompt

            def source(row=row):
                value = get_field(images[row], args.image_column, None)
                return image_sources(value, args.image_root)[0]

            items.append(Item(inference_name(value, split, row, args.image_root), prompt, source))
    if not items:
        raise PredictError(f"The {split} split holds no rows")
    return items


# ---------------------------------------------------------------------------------------------------- output
def row_key(row: dict) -> tuple[str, str]:
    return row["image"], row["prompt"]


def job_settings(args: PredictArguments, items: list[Item]) -> dict:
    """What the rows of --output depend on: checked before a partial file is resumed (mblip.outputs)."""
    pairs = json.dumps([(item.image, item.prompt) for item in items], ensure_ascii=False).encode()
    return {
        "model_identity": model_identity(args.model),
        "dtype": args.dtype,
        "load_in_8bit": args.load_in_8bit,
        "load_in_4bit": args.load_in_4bit,
        "generation": args.generation_kwargs(),
        "seed": args.seed if args.do_sample else None,
        "inputs": {"count": len(items), "sha256": hashlib.sha256(pairs).hexdigest()},
    }


def open_output(args: PredictArguments, items: list[Item]) -> ResumableJsonl | None:
    """OUTPUT.partial with what an earlier run of the same job left in it; None for stdout."""
    if not args.output:
        return None
    try:
        return ResumableJsonl(args.output, job_settings(args, items), overwrite=args.overwrite, check=row_key)
    except FileExistsError as err:
        raise PredictError(str(err)) from None


def print_rows(rows: list[dict]):
    sys.stdout.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------------- run
@dataclass
class PredictReport:
    written: int = 0
    resumed: int = 0
    # Unreadable images out of the whole job, resumed rows included, so that a resumed run is judged like an
    # uninterrupted one.
    bad_rows: BadRows = field(default_factory=lambda: BadRows(noun="images", state="unreadable"))
    not_images: list[str] = field(default_factory=list)
    seconds: float = 0.0
    output: str | None = None

    @property
    def unreadable(self) -> list[tuple[str, str]]:
        """(path, reason) of the first unreadable images."""
        return [(example["row"], example["reason"]) for example in self.bad_rows.examples]

    @property
    def unreadable_fraction(self) -> float:
        return self.bad_rows.fraction


def run_batches(todo: list[Item], model, processor, write, args: PredictArguments, report: PredictReport):
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    generation_kwargs = args.generation_kwargs()
    batch: list[tuple[Item, object]] = []

    def flush():
        texts = generate_texts(
            model, processor, [im for _, im in batch], [it.prompt for it, _ in batch], **generation_kwargs
        )
        write([{"image": it.image, "prompt": it.prompt, "text": text} for (it, _), text in zip(batch, texts)])
        report.written += len(batch)
        progress.update(len(batch))
        batch.clear()

    # Warnings about unreadable images go through tqdm, so that they do not tear the progress bar.
    with logging_redirect_tqdm(), tqdm(total=len(todo), unit="image", desc="predict", dynamic_ncols=True) as progress:
        for item in todo:
            try:
                batch.append((item, open_image(item.source() if item.source else item.image)))
            except (ImageDecodeError, ImageValueError) as err:
                logger.warning("Skipping unreadable image %s (%s)", item.image, err.reason)
                report.bad_rows.add(err.reason, item.image)
                progress.update(1)
                continue
            if len(batch) == args.batch_size:
                flush()
        if batch:
            flush()


def predict(args: PredictArguments, model_and_processor=None) -> PredictReport:
    """Runs a whole prediction; raises PredictError for user errors. Pass (model, processor) to skip loading."""
    start = time.perf_counter()
    if model_and_processor is None:
        resolve_model(args.model)  # a missing model fails before any file is touched
    items, not_images = collect_items(args)
    writer = open_output(args, items)
    try:
        done = {row_key(row) for row in writer.rows} if writer else set()
        todo = [item for item in items if (item.image, item.prompt) not in done]
        report = PredictReport(resumed=len(items) - len(todo), not_images=not_images, output=args.output)
        report.bad_rows.total = len(items)
        if not_images:
            logger.warning("Ignoring %d files that are not images: %s", len(not_images), ", ".join(not_images[:10]))
        if todo:
            model, processor = model_and_processor or load_model(
                args.model, args.dtype, args.load_in_8bit, args.load_in_4bit, args.device
            )
            set_seed(args.seed)
            run_batches(todo, model, processor, writer.write if writer else print_rows, args, report)
        report.seconds = time.perf_counter() - start
        if writer and report.bad_rows.over(args.max_bad_rows):
            writer.close()  # keep OUTPUT.partial: a rerun after fixing the files only does what is left
        elif writer:
            writer.finish()
    except BaseException:
        if writer:
            writer.close()
        raise
    return report


def summarize(report: PredictReport, args: PredictArguments) -> int:
    """Logs what happened; the exit status."""
    logger.info(
        "Predicted %d images in %.1f s%s%s",
        report.written,
        report.seconds,
        f" ({report.resumed} done by an earlier run)" if report.resumed else "",
        f"; wrote {report.output}" if report.output else "",
    )
    if report.not_images:
        logger.info("%d files in --image_dir are not images and were left out", len(report.not_images))
    bad = report.bad_rows
    if not bad.count:
        return 0
    names = "; ".join(f"{path} ({reason})" for path, reason in report.unreadable)
    logger.warning("Skipped %d unreadable images: %s", bad.count, names)
    if bad.over(args.max_bad_rows):
        kept = f"; the rows so far are in {report.output}.partial and a rerun resumes there" if report.output else ""
        logger.error("%s%s", bad.message(args.max_bad_rows), kept)
        return 1
    return 0


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = MBlipArgumentParser(PredictArguments, description=__doc__)
    try:
        (args,) = parser.parse_command_line(argv)  # flags, or one .json/.yaml file followed by overriding flags
        report = predict(args)
    except (PredictError, ValueError) as err:
        parser.exit(2, f"predict.py: error: {err}\n")
    return summarize(report, args)


if __name__ == "__main__":
    sys.exit(main())
