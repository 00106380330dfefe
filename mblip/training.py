"""mBLIP re-alignment as a Trainer run: arguments, data checks, collator, model loading, trainer and export.

`train_mblip.py` (the command line, with the exact commands in its docstring) calls `main` here; the offline demo
and the benchmarks call it in-process too, which is why it lives in the package.
"""

import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import PartialState
from PIL import Image
from safetensors.torch import load_file, save_file
from safetensors.torch import save as save_safetensors
from transformers import BitsAndBytesConfig, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import TrainerState

from mblip.adapters import base_reference, save_adapter, with_trained_weights
from mblip.arguments import parse_args as parse_arguments
from mblip.cards import model_card
from mblip.checkpoints import (
    EXPORT_NAMES,
    OVERWRITE_FLAG,
    RunBookkeeping,
    checkpoint_problem,
    last_complete_checkpoint,
    mark_finished,
    prepare_output_dir,
    read_checkpoint_state,
    refuse_user_files,
    replace_export,
    run_fingerprint,
)
from mblip.data.storage import atomic_open, atomic_write_json
from mblip.hub import move_into, save_model_repository, write_model_repository
from mblip.images import ImageDecodeError, open_image
from mblip.loading import DTYPES, get_quantization_config, resolve_dtype
from mblip.modeling_mblip import IGNORE_INDEX, MBlipForConditionalGeneration
from mblip.processing_mblip import MBlipProcessor
from mblip.training_data import (
    ImageValueError,
    describe,
    file_stamp,
    fork_start_method,
    get_field,
    image_key,
    image_sources,
    is_embedded,
    iter_column_sources,
    prepare_data,
)
from mblip.validation import (
    VALIDATION_DIR,
    GenerationValidation,
    GenerationValidationMixin,
    ValidationArguments,
    card_validation,
)


logger = logging.getLogger("train_mblip")

TRAINABLE_WEIGHTS = "trainable.safetensors"
INIT_DIR = "init"
LORA_OUTPUTS = ("merged", "merged_and_adapter", "adapter")
PROJECTION_INITS = ("auto", "blip2", "random")


# ---------------------------------------------------------------------------------------------------- arguments
@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "An mBLIP checkpoint (folder or Hub id) to continue from."}
    )
    vision_model_name_or_path: str | None = field(
        default=None, metadata={"help": "BLIP-2 checkpoint whose ViT, Q-Former and query tokens start the run."}
    )
    language_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The multilingual LLM (e.g. bigscience/mt0-xl, bigscience/bloomz-7b1)."}
    )
    load_in_8bit: bool = field(  # None until __post_init__; `bool` so that a bare --load_in_8bit works
        default=None,
        metadata={
            "help": "Load the LLM (only) in 8-bit with bitsandbytes. Default: on unless --load_in_4bit (the official "
            "mT0-XL recipe); --load_in_8bit false trains on an un-quantized LLM."
        },
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the LLM (only) in 4-bit NF4 with bitsandbytes."})
    bnb_4bit_quant_type: str = field(default="nf4", metadata={"help": "4-bit type: nf4 or fp4."})
    bnb_4bit_use_double_quant: bool = field(
        default=True,
        metadata={"help": "4-bit: also quantize the quantization constants (QLoRA; the official BLOOMZ run: false)."},
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype of the un-quantized weights (float32, bfloat16, float16; not auto). Trainable weights "
            "should stay float32; use --bf16 for mixed precision."
        },
    )
    use_peft: bool = field(default=True, metadata={"help": "Train LoRA adapters on the LLM."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "LLM module names to adapt. Default: every linear layer of the LLM except its output "
            "layer, found in the loaded LLM itself (peft's 'all-linear'), never from a checkpoint name."
        },
    )
    freeze_qformer: bool = field(default=False, metadata={"help": "Freeze the Q-Former and query tokens."})
    freeze_projection: bool = field(default=False, metadata={"help": "Freeze the projection into the LLM."})
    projection_init: str = field(
        default="auto",
        metadata={
            "help": f"Starting from parts, the projection into the LLM: one of {PROJECTION_INITS}. auto takes the "
            "BLIP-2 checkpoint's own projection when it maps into the LLM's hidden size (the official mT0-XL run "
            "copies BLIP-2 Flan-T5-XL's), else a fresh one (BLOOMZ-7B); blip2 requires it; random never uses it."
        },
    )
    train_vision_model: bool = field(default=False, metadata={"help": "Also train the ViT (frozen in the paper)."})
    lora_output: str = field(
        default="merged",
        metadata={
            "help": f"One of {LORA_OUTPUTS}: merge LoRA into an un-quantized LLM copy (default), also keep "
            "the adapter in adapter/, or save only the adapter and the trained vision-stack weights."
        },
    )
    max_shard_size: str = field(default="5GB", metadata={"help": "Largest safetensors shard of the output."})
    license: str | None = field(
        default=None,
        metadata={
            "help": "The model card's licence (a Hub licence id, e.g. mit). Default: the base models' own, from their "
            "cards, or known for the usual checkpoints (Salesforce/blip2-flan-t5-xl, bigscience/mt0-xl, "
            "bigscience/bloomz-7b1, Gregor/mblip-*); 'other' (with a warning) when unknown."
        },
    )

    def __post_init__(self):
        parts = (self.vision_model_name_or_path, self.language_model_name_or_path)
        if bool(self.model_name_or_path) == any(parts):
            raise ValueError(
                "Give either --model_name_or_path (an mBLIP checkpoint) or both --vision_model_name_or_path and "
                f"--language_model_name_or_path; got model_name_or_path={self.model_name_or_path!r}, "
                f"vision_model_name_or_path={parts[0]!r}, language_model_name_or_path={parts[1]!r}"
            )
        if any(parts) and not all(parts):
            raise ValueError(
                "Starting from parts needs both --vision_model_name_or_path and --language_model_name_or_path; "
                f"got {parts[0]!r} and {parts[1]!r}"
            )
        if self.load_in_8bit and self.load_in_4bit:
            raise ValueError("Choose one of --load_in_8bit and --load_in_4bit, not both")
        if self.load_in_8bit is None:
            self.load_in_8bit = not self.load_in_4bit
        if self.projection_init not in PROJECTION_INITS:
            raise ValueError(f"--projection_init must be one of {PROJECTION_INITS}, got {self.projection_init!r}")
        if self.freeze_projection and self.freeze_qformer and not self.use_peft and not self.train_vision_model:
            raise ValueError(
                "--freeze_projection with --freeze_qformer and --use_peft false leaves nothing to train; "
                "unfreeze one part or pass --train_vision_model"
            )
        if self.dtype not in DTYPES or self.dtype == "auto":
            # auto could pick bfloat16 on a GPU, and the trainable weights must stay in the dtype asked for.
            raise ValueError(f"--dtype must be float32, bfloat16 or float16 for training, got {self.dtype!r}")
        if self.lora_output not in LORA_OUTPUTS:
            raise ValueError(f"--lora_output must be one of {LORA_OUTPUTS}, got {self.lora_output!r}")
        if self.lora_output != "merged" and not self.use_peft:
            raise ValueError(f"--lora_output {self.lora_output} needs --use_peft (there is no adapter to keep)")
        if self.bnb_4bit_quant_type not in ("nf4", "fp4"):
            raise ValueError(f"--bnb_4bit_quant_type must be nf4 or fp4, got {self.bnb_4bit_quant_type!r}")

    @property
    def quantized(self) -> bool:
        return self.load_in_8bit or self.load_in_4bit


@dataclass
class DataArguments(ValidationArguments):
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training data: one file, several separated by commas, or globs, of any format datasets infers "
            "from the extension (jsonl/json, csv/tsv, parquet, arrow, webdataset .tar shards, image files)."
        },
    )
    validation_file: str | None = field(default=None, metadata={"help": "Validation data, same forms."})
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A `datasets.load_dataset` name or path: a Hub id, a local folder (imagefolder with "
            "metadata.jsonl, parquet or webdataset shards, a save_to_disk folder)."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Train from an IterableDataset without materialising it: rows are checked as they arrive, every "
            "process reads the stream and trains on its own slice of each batch, and checkpoints hold the stream's "
            "state. Needs --max_steps and --dataloader_num_workers 0."
        },
    )
    shuffle_buffer_size: int = field(
        default=0,
        metadata={
            "help": "--streaming: shuffle shards and rows through a buffer of this many rows (0: the stream's own "
            "order, which a resume continues exactly; a buffer's content is refilled on resume)."
        },
    )
    data_check_cache: str | None = field(
        default=None,
        metadata={
            "help": "Folder caching the data check (per dataset fingerprint and columns: each image's verdict with "
            "its file's size, mtime and ctime), so a rerun on the same data checks only the images whose files "
            "changed. Default: <datasets cache>/mblip_data_checks; none: off."
        },
    )
    recheck_images: bool = field(default=False, metadata={"help": "Check the images again, ignoring a cached check."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration."})
    train_split: str = field(default="train", metadata={"help": "Split of --dataset_name to train on."})
    validation_split: str | None = field(default=None, metadata={"help": "Split of --dataset_name to evaluate on."})
    image_root: str = field(default=".", metadata={"help": "Folder the image column's paths are relative to."})
    image_column: str = field(
        default="image_id",
        metadata={
            "help": "Image column (mBLIP's release: image_id), one image or a list per row: paths relative to "
            "--image_root, an Image() column (decoded or {bytes, path} records), or image bytes. Dots reach into "
            "nested fields (json.image); so do they for --prompt_column and --target_column (json.context)."
        },
    )
    prompt_column: str = field(
        default="context",
        metadata={"help": "Prompt column; mBLIP's release uses context. '' trains without prompts (targets only)."},
    )
    target_column: str = field(default="label", metadata={"help": "Target column; mBLIP's release uses label."})
    max_bad_rows: float = field(
        default=0.01,
        metadata={
            "help": "Largest fraction of rows that may be unusable (missing/unreadable image, empty target, a "
            "malformed JSONL line, another number of images) before the run fails: checked before training, and "
            "again during training as images fail to decode (each row counted once). Unusable rows are skipped and "
            "reported, never replaced."
        },
    )
    augment: bool = field(  # None until __post_init__; `bool` so that a bare --augment works
        default=None,
        metadata={
            "help": "The official augmentation: random resized crop (scale 0.5-1, bicubic) and horizontal flip. "
            "Default: on, except with --image_features_cache (cached ViT outputs cannot be augmented)."
        },
    )
    image_features_cache: str | None = field(
        default=None,
        metadata={
            "help": "Compute the frozen ViT's outputs once per image into this folder (safetensors shards keyed by "
            "path, size and mtime, or by content for embedded images, so an image edited in place is encoded "
            "again; an interrupted build resumes) and train on them: no step runs the ViT again. Needs a frozen ViT and "
            "no --augment. Disk: patches x width x dtype bytes per image (ViT-g at 224 px in bf16: 0.7 MB)."
        },
    )
    max_length: int = field(
        default=128,
        metadata={
            "help": "Truncate prompts and, separately, targets to this many tokens, with a warning (official: 128). "
            "0: no limit of our own (the tokenizer's model_max_length, if it sets one)."
        },
    )
    prompt_truncation_side: str = field(
        default="right",
        metadata={
            "help": "right: an over-long prompt keeps its start (official); left: its end. Targets always keep "
            "their start, and tokens the tokenizer adds (T5's EOS) are kept."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation rows."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for the data checks."})

    def __post_init__(self):
        self.check_validation_arguments()  # --validation_* (mblip/validation.py)
        if bool(self.train_file) == bool(self.dataset_name):
            raise ValueError(
                f"Give exactly one of --train_file and --dataset_name; got train_file={self.train_file!r}, "
                f"dataset_name={self.dataset_name!r}"
            )
        if self.shuffle_buffer_size < 0:
            raise ValueError(f"--shuffle_buffer_size must be 0 or more, got {self.shuffle_buffer_size}")
        if not 0.0 <= self.max_bad_rows <= 1.0:
            raise ValueError(f"--max_bad_rows is a fraction between 0 and 1, got {self.max_bad_rows}")
        if self.image_features_cache and self.augment:
            raise ValueError(
                "--image_features_cache stores one ViT output per image file: it cannot follow --augment's "
                "random crops and flips. Drop one of the two."
            )
        if self.augment is None:
            self.augment = not self.image_features_cache
        if self.max_length < 0:
            raise ValueError(f"--max_length must be positive, or 0 for no limit; got {self.max_length}")
        if self.prompt_truncation_side not in ("left", "right"):
            raise ValueError(f"--prompt_truncation_side must be left or right, got {self.prompt_truncation_side!r}")


@dataclass
class MBlipTrainingArguments(TrainingArguments):
    """TrainingArguments whose defaults are the official mBLIP mT0-XL instruction-training recipe (README.md,
    "Official recipe vs this project"): per-part learning rates, weight decay 0.1 (none on biases and norms), cosine
    schedule with 1000 warm-up steps, 8 x 16 = 128 examples per optimizer step on one device, 2 epochs, gradient
    clipping at 1.0, activation (gradient) checkpointing, and bf16 mixed precision where the device supports it."""

    learning_rate: float = field(
        default=1e-5, metadata={"help": "Learning rate of the projection (official: 1e-5, BLIP-2's group rate)."}
    )
    qformer_learning_rate: float = field(
        default=1e-5, metadata={"help": "Learning rate of the Q-Former and query tokens (official: 1e-5)."}
    )
    lora_learning_rate: float = field(
        default=2e-4, metadata={"help": "Learning rate of the LoRA weights (official: 2e-4)."}
    )
    vision_learning_rate: float = field(default=1e-5, metadata={"help": "Learning rate of the ViT if it trains."})
    weight_decay: float = field(
        default=0.1, metadata={"help": "AdamW weight decay (official: 0.1); never on biases and norm weights."}
    )
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule (official: cosine)."})
    warmup_steps: float = field(default=1000, metadata={"help": "Linear warm-up steps (official: 1000)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Examples per device and step."})
    gradient_accumulation_steps: int = field(
        default=16,
        metadata={
            "help": "Steps per optimizer update. Official: 128 examples per update; with N processes pass "
            "128 / (N x per_device_train_batch_size)."
        },
    )
    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs (official instruction training: 2)."})
    bf16: bool = field(  # None until __post_init__; `bool` so that a bare --bf16 works
        default=None,
        metadata={
            "help": "bf16 mixed precision. Default: on where the GPU supports bf16, else fp32 with a log line "
            "(CPUs: bf16 autocast is slower than fp32 on most of them)."
        },
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the collator reads the rows."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Start over in an output_dir that holds a run: delete its checkpoints and init/ instead of "
            "resuming. Without it, a rerun with other data or settings is refused. Files you put in output_dir "
            "yourself are never touched."
        },
    )

    def __post_init__(self):
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True  # official: on (recomputes activations in backward; saves memory)
        if self.bf16 is None:
            self.bf16, reason = default_bf16(self.use_cpu or self.fp16)
            (logger.info if self.bf16 else logger.warning)("Mixed precision: bf16 %s", reason)
        super().__post_init__()


def default_bf16(cpu_or_fp16: bool) -> tuple[bool, str]:
    """Whether to train in bf16 mixed precision by default, and why (for the log)."""
    if cpu_or_fp16:
        return False, "off: --use_cpu or --fp16 was given; training in fp32 (or fp16)"
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return True, "on: the GPU supports bf16 (official recipe: mixed precision)"
    if torch.cuda.is_available():
        return False, "off: this GPU has no bf16 support; falling back to fp32 (pass --fp16 to try fp16)"
    return False, "off: no GPU; falling back to fp32 on CPU (bf16 autocast is slower than fp32 on most CPUs)"


# ---------------------------------------------------------------------------------------------------- data
def load_raw_datasets(data_args: DataArguments):
    """The train (and validation) data in any form (mblip/training_data.py); `.line_problems[split]` lists the JSONL
    lines left out (see load_jsonl)."""
    from mblip.training_data import load_raw_datasets as load_any

    return load_any(data_args, read_jsonl=load_jsonl)


def first_bad_utf8(path: str, chunk: int = 16 << 20) -> int | None:
    """The byte offset of the first invalid UTF-8 sequence in a file, or None (a fast pass at C speed)."""
    import codecs

    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as handle:
        while data := handle.read(chunk):
            try:
                decoder.decode(data)
            except UnicodeDecodeError as err:
                return offset + err.start
            offset += len(data)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return offset
    return None


def scan_jsonl(path: str) -> tuple[list[bytes], list[dict]]:
    """The usable lines of a JSONL file and, for each unusable one, its file, line and byte offset and why."""
    lines, problems, offset = [], [], 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            reason = ""
            try:
                row = json.loads(raw.decode("utf-8"))
                if not isinstance(row, dict):
                    reason = f"not a JSON object but {type(row).__name__}"
            except UnicodeDecodeError as err:
                reason = f"not UTF-8 (byte {raw[err.start]:#04x} at offset {offset + err.start})"
            except ValueError as err:
                reason = f"malformed JSON ({err})" if raw.strip() else ""
                if not raw.strip():
                    offset += len(raw)
                    continue
            if reason:
                problems.append({"file": path, "line": number, "offset": offset, "reason": reason})
            else:
                lines.append(raw if raw.endswith(b"\n") else raw + b"\n")
            offset += len(raw)
    return lines, problems


def load_jsonl(path: str) -> tuple[datasets.Dataset, list[dict]]:
    """A JSONL file as a dataset; lines that are not UTF-8 or not a JSON object are left out and returned with their
    file, line and byte offset, to be counted as unusable rows (datasets' own json reader fails on the whole file
    with a message that names neither, or reads bytes that fail later)."""
    if first_bad_utf8(path) is None:
        try:
            return datasets.load_dataset("json", data_files=path, split="train"), []
        except Exception as err:  # the file is scanned below, for the lines at fault
            failure = err
    else:
        failure = None
    lines, problems = scan_jsonl(path)
    if not problems:
        raise ValueError(f"Cannot read {path}: {type(failure).__name__}: {failure}") from failure
    for problem in problems[:5]:
        logger.warning(
            "%s:%d (byte offset %d): %s", problem["file"], problem["line"], problem["offset"], problem["reason"]
        )
    if not lines:
        raise ValueError(f"{path} has no usable line; the first problem: {problems[0]}")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mblip-jsonl-") as tmp:
        clean = Path(tmp) / Path(path).name
        clean.write_bytes(b"".join(lines))
        dataset = datasets.load_dataset("json", data_files=str(clean), split="train", keep_in_memory=True)
    return dataset, problems


def image_paths(value, image_root: str) -> list[str]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [os.path.join(image_root, str(v)) for v in values]


def find_problem(row: dict, data_args: DataArguments) -> str:
    """'' for a usable row, else the reason it cannot be trained on (mblip/training_data.py's check of one row)."""
    from mblip.training_data import row_problem

    return row_problem(row, data_args)


def target_text(value) -> str:
    """A row's target as trained: a string as is; a list of answers (VQA's several annotators) as its most common
    answer, the first of those tied (counted in the data report as list_targets)."""
    if isinstance(value, (list, tuple)):
        answers = [str(v).strip() for v in value if v is not None and str(v).strip()]
        return max(answers, key=answers.count) if answers else ""
    return "" if value is None else str(value)


def image_count(value) -> int:
    return len(value) if isinstance(value, (list, tuple)) else int(value is not None and value != "")


def drop_bad_rows(
    dataset: datasets.Dataset, data_args: DataArguments, split: str, line_problems: list[dict] = ()
) -> tuple[datasets.Dataset, dict]:
    """Skips unusable rows, counts them by reason with a few examples, and fails past --max_bad_rows; each distinct
    image checked once, in parallel, cached between runs (mblip/training_data.py's check_split). The rows kept carry
    their index in `dataset` as `_row`; `line_problems` (see load_jsonl) count as unusable rows too."""
    from mblip.training_data import check_split

    return check_split(dataset, data_args, split, line_problems)


def random_resized_crop(
    image: Image.Image, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), generator: torch.Generator | None = None
) -> Image.Image:
    """torchvision's RandomResizedCrop sampling (torchvision has no CPU build here), drawn from `generator` (training
    gives each row its own, see `augmentation_generator`), else from torch's global RNG."""
    width, height = image.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * float(torch.empty(1).uniform_(*scale, generator=generator))
        aspect = math.exp(float(torch.empty(1).uniform_(*log_ratio, generator=generator)))
        w, h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            return image.crop((left, top, left + w, top + h))
    side = min(width, height)  # fall back to a central crop, as torchvision does
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


class ImageFeaturesCache:
    """The frozen ViT's output for each image file, computed once and stored in `folder` as safetensors shards.

    With a frozen ViT and no augmentation, every epoch would compute the same ViT outputs again: for mBLIP mT0-XL the
    ViT-g forward is about half of a training step's model FLOPs (BENCHMARKS.md). Each shard holds up to `shard_size`
    images, keyed by a hash of the image file's path, size and mtime_ns (an image edited in place gets a new key, so
    its features are computed again and the old ones are never served), or of the content hash of an embedded image;
    shards are written atomically, so an interrupted build keeps its finished shards and resumes. `cache.json` records a fingerprint of the ViT weights and the image processor settings; a
    cache made by another ViT or other preprocessing is refused rather than silently used.
    """

    INFO = "cache.json"

    def __init__(self, folder: str | os.PathLike, fingerprint: str, shard_size: int = 1024):
        self.folder, self.fingerprint, self.shard_size = Path(folder), fingerprint, shard_size
        self.folder.mkdir(parents=True, exist_ok=True)
        info_path = self.folder / self.INFO
        if info_path.is_file():
            seen = json.loads(info_path.read_text(encoding="utf-8"))["fingerprint"]
            if seen != fingerprint:
                raise ValueError(
                    f"--image_features_cache {str(self.folder)!r} holds features of another ViT or image "
                    f"preprocessing (fingerprint {seen[:12]}, this run {fingerprint[:12]}); use another folder or "
                    "delete it"
                )
        else:
            atomic_write_json(info_path, {"fingerprint": fingerprint})
        self.shard_of = self._read_index()

    @staticmethod
    def key(image: str) -> str:
        """The shard key of an image (mblip/training_data.py's image_key): a path with its file's size and mtime_ns
        now (one stat()), or an embedded image's content hash as it is."""
        if is_embedded(image):
            return hashlib.sha1(image.encode("utf-8")).hexdigest()
        path = os.path.normpath(image)
        size, mtime_ns, _ = file_stamp(path)  # not ctime: a chmod leaves the pixels, and the ViT is costly to rerun
        return hashlib.sha1(f"{path}\0{size}\0{mtime_ns}".encode()).hexdigest()

    def _read_index(self) -> dict[str, str]:
        from safetensors import safe_open

        index = {}
        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            try:
                with safe_open(shard, framework="pt") as f:
                    index.update(dict.fromkeys(f.keys(), shard.name))
            except Exception as err:
                raise ValueError(
                    f"The image features cache shard {shard} is corrupt ({type(err).__name__}: {err}); delete that "
                    "file and rerun: only its images are encoded again"
                ) from err
        return index

    def build(self, paths, encode, batch_size: int) -> dict:
        """Encodes the images not cached yet (new, or changed since) with `encode(list of paths) -> (features, failed
        paths)`."""
        keys = {p: self.key(p) for p in paths}  # one stat() per image file
        todo = sorted(p for p, key in keys.items() if key not in self.shard_of)
        failed = []
        number = len(list(self.folder.glob("shard-*.safetensors")))
        for start in range(0, len(todo), self.shard_size):
            chunk, tensors = todo[start : start + self.shard_size], {}
            for i in range(0, len(chunk), batch_size):
                features, bad = encode(chunk[i : i + batch_size])
                tensors.update((keys[p], f) for p, f in features.items())
                failed += bad
            name = f"shard-{number:05d}.safetensors"
            with atomic_open(self.folder / name, "wb") as handle:
                handle.write(save_safetensors(tensors))
            self.shard_of.update(dict.fromkeys(tensors, name))
            number += 1
            logger.info(
                "Image features: %d of %d new images encoded", min(start + self.shard_size, len(todo)), len(todo)
            )
        return {"encoded": len(todo) - len(failed), "cached_before": len(keys) - len(todo), "failed": failed}

    def placeholder(self) -> torch.Tensor:
        """Zeros of the shape and dtype of the cached features (for a batch none of whose images has features)."""
        from safetensors import safe_open

        if not self.shard_of:
            raise ValueError(f"The image features cache {self.folder} holds no features: no image could be encoded")
        key, shard = next(iter(self.shard_of.items()))
        with safe_open(self.folder / shard, framework="pt") as f:
            return torch.zeros_like(f.get_tensor(key))

    def load(self, paths: list[str]) -> list[torch.Tensor | None]:
        """The features of each image (None for one that failed to decode when the cache was built, or changed
        since)."""
        from safetensors import safe_open

        keys = [self.key(p) for p in paths]
        by_shard = {}
        for i, key in enumerate(keys):
            shard = self.shard_of.get(key)
            if shard is not None:
                by_shard.setdefault(shard, []).append(i)
        out = [None] * len(paths)
        for shard, positions in by_shard.items():
            try:
                with safe_open(self.folder / shard, framework="pt") as f:
                    for i in positions:
                        out[i] = f.get_tensor(keys[i])
            except Exception as err:
                raise ValueError(
                    f"The image features cache shard {self.folder / shard} is corrupt ({type(err).__name__}: {err}); "
                    "delete that file and rerun: only its images are encoded again"
                ) from err
        return out


def vision_fingerprint(vision_model: torch.nn.Module, image_processor) -> str:
    """sha256 of the ViT's weights and the image preprocessing settings: what the cached features depend on."""
    digest = hashlib.sha256(image_processor.to_json_string().encode("utf-8"))
    for name, tensor in sorted(vision_model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_image_features_cache(model, processor, datasets_to_cache, data_args, batch_size: int) -> ImageFeaturesCache:
    """Fills --image_features_cache with the ViT outputs of every image the datasets use (main process first)."""
    vision_model = getattr(model, "get_base_model", lambda: model)().vision_model
    cache = ImageFeaturesCache(
        data_args.image_features_cache, vision_fingerprint(vision_model, processor.image_processor)
    )
    # Keyed by path (the cache adds the file's size and mtime), or by content for embedded images (mblip/
    # training_data.py's image_key); an embedded image is remembered by its row and read again when encoded, so the
    # column's bytes are never all in memory.
    sources = {}
    for number, dataset in enumerate(datasets_to_cache):
        for row, found in iter_column_sources(dataset, data_args.image_column, data_args.image_root):
            for source in found:
                sources.setdefault(image_key(source), source if isinstance(source, str) else (number, row))
    paths = list(sources)
    weight = vision_model.embeddings.patch_embedding.weight

    def source_of(key):
        source = sources[key]
        if isinstance(source, tuple):
            value = get_field(datasets_to_cache[source[0]][source[1]], data_args.image_column)
            source = next(s for s in image_sources(value, data_args.image_root) if image_key(s) == key)
        return source

    def encode(batch_paths):
        images, kept, failed = [], [], []
        for path in batch_paths:
            try:
                images.append(open_image(source_of(path)))
                kept.append(path)
            except ImageDecodeError as err:
                logger.warning("Not caching an image that fails to decode (%s): %s", path, err)
                failed.append(path)
        if not images:
            return {}, failed
        pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            hidden = vision_model(
                pixel_values=pixels.to(weight.device, weight.dtype), return_dict=True
            ).last_hidden_state
        return {p: h.cpu().contiguous() for p, h in zip(kept, hidden)}, failed

    was_training = vision_model.training
    vision_model.eval()
    try:
        result = cache.build(paths, encode, batch_size)
    finally:
        vision_model.train(was_training)
    logger.info(
        "Image features cache %s: %d images encoded now, %d already cached, %d failed to decode",
        cache.folder,
        result["encoded"],
        result["cached_before"],
        len(result["failed"]),
    )
    return cache


@dataclass
class MBlipCollator:
    """Loads each row's image(s) (or their cached ViT outputs), optionally augments them, and builds the model's input
    contract.

    Rows from `drop_bad_rows` carry their index as `_row`: each such row is augmented with its own generator, seeded
    by (seed, epoch, row), so a row's crop does not depend on batch order, data-loading workers, prefetching or a
    resume; and the batch lists the rows whose image failed to decode under FAILED_ROWS_KEY (MBlipTrainer takes it
    out before the forward pass and counts each row once, across workers and processes)."""

    processor: MBlipProcessor
    data_args: DataArguments
    augment: bool = False
    failures: int = 0
    features: ImageFeaturesCache | None = None
    seed: int = 0
    epoch: int = 0  # set by EpochForAugmentation at each epoch's start, before the data loader's workers start

    def load(self, path: str, generator: torch.Generator | None = None) -> Image.Image:
        image = open_image(path)
        if self.augment:
            image = random_resized_crop(image, generator=generator)
            if float(torch.rand(1, generator=generator)) < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image

    def generator(self, row: dict) -> torch.Generator | None:
        if not self.augment or "_row" not in row:
            return None
        return augmentation_generator(self.seed, self.epoch, row["_row"])

    def prompt(self, row: dict) -> str:
        column = self.data_args.prompt_column
        return str(get_field(row, column, None) or "") if column else ""

    def __call__(self, rows: list[dict]) -> dict:
        if self.features is not None:
            return self.from_features(rows)
        args = self.data_args
        images, prompts, targets, failed = [], [], [], []
        for row in rows:
            generator = self.generator(row)
            value = get_field(row, args.image_column, None)  # any form (mblip/training_data.py), nested names too
            try:
                loaded = [self.load(p, generator) for p in image_sources(value, args.image_root)]
            except (ImageDecodeError, ImageValueError) as err:
                # Passed the up-front check but fails to decode (e.g. a truncated file): skip it, never substitute.
                self.failures += 1
                failed.append(row.get("_row", -1))
                logger.warning("Skipping a row whose image fails to decode (%s): %s", describe(value), err)
                continue
            images.append(loaded if isinstance(value, (list, tuple)) else loaded[0])
            prompts.append(self.prompt(row))
            targets.append(target_text(get_field(row, args.target_column)))
        if not images:
            return self.placeholder_batch(rows, failed)
        if len({isinstance(i, list) for i in images}) > 1 and all(len(i) == 1 for i in images if isinstance(i, list)):
            images = [i[0] if isinstance(i, list) else i for i in images]  # one image per row, some as a list
        side = args.prompt_truncation_side
        batch = dict(self.processor(images=images, text=prompts, text_target=targets, prompt_truncation_side=side))
        return self.with_failures(batch, rows, failed)

    def placeholder_batch(self, rows: list[dict], failed: list[int]) -> dict:
        """The batch for rows none of which could be used: one blank row whose labels are all -100, marked with
        PLACEHOLDER_KEY, so that the step still runs its forward and backward (under DDP every process must, or the
        others wait forever in the gradient all-reduce) and MBlipTrainer makes it contribute exactly nothing. The
        failed rows are counted as usual, so --max_bad_rows still decides whether the run goes on."""
        logger.warning(
            "None of the %d rows of a batch could be used (see the warnings above): this step trains on nothing",
            len(rows),
        )
        if self.features is not None:
            batch = dict(self.processor(text=[""], text_target=[""]))
            batch["image_embeds"] = self.features.placeholder()[None]
        else:
            batch = dict(self.processor(images=[Image.new("RGB", (32, 32))], text=[""], text_target=[""]))
        batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
        batch[PLACEHOLDER_KEY] = torch.tensor(len(rows))
        return self.with_failures(batch, rows, failed)

    @staticmethod
    def with_failures(batch: dict, rows: list[dict], failed: list[int]) -> dict:
        if rows and "_row" in rows[0]:
            batch[FAILED_ROWS_KEY] = torch.tensor(failed, dtype=torch.long)
        return batch

    def from_features(self, rows: list[dict]) -> dict:
        args = self.data_args
        embeds, prompts, targets, failed = [], [], [], []
        for row in rows:
            value = get_field(row, args.image_column, None)
            try:
                loaded = self.features.load([image_key(s) for s in image_sources(value, args.image_root)])
            except ImageValueError:
                loaded = [None]
            if any(f is None for f in loaded):
                # The image failed to decode when the cache was built (logged then), or changed since.
                self.failures += 1
                failed.append(row.get("_row", -1))
                continue
            embeds.append(torch.stack(loaded) if isinstance(value, (list, tuple)) else loaded[0])
            prompts.append(self.prompt(row))
            targets.append(target_text(get_field(row, args.target_column)))
        if not embeds:
            return self.placeholder_batch(rows, failed)
        batch = dict(
            self.processor(text=prompts, text_target=targets, prompt_truncation_side=args.prompt_truncation_side)
        )
        if len({e.dim() for e in embeds}) > 1:  # one image per row, some as a list of one
            embeds = [e[0] if e.dim() == 3 else e for e in embeds]
        batch["image_embeds"] = torch.stack(embeds)
        return self.with_failures(batch, rows, failed)


FAILED_ROWS_KEY = "mblip_failed_rows"
PLACEHOLDER_KEY = "mblip_placeholder_for"  # a placeholder batch: the number of rows none of which decoded


def augmentation_generator(seed: int, epoch: int, row: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{epoch}:{row}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


class EpochForAugmentation(TrainerCallback):
    """Tells the collator the epoch about to start (on_epoch_begin comes before the epoch's data loader iterator and
    its workers), so that each epoch crops every row afresh."""

    def __init__(self, collator: MBlipCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)


# ---------------------------------------------------------------------------------------------------- model
def assemble_init(model_args: ModelArguments, output_dir: str, seed: int) -> str:
    """The paper's starting point, assembled once into output_dir/init by the main process (reused on resume)."""
    from mblip.convert import from_parts

    init = Path(output_dir) / INIT_DIR
    with PartialState().main_process_first():
        if PartialState().is_main_process and not (init / "config.json").is_file():
            model, processor = from_parts(
                model_args.vision_model_name_or_path,
                model_args.language_model_name_or_path,
                seed=seed,
                projection_init=model_args.projection_init,
            )
            card = model_card(
                "mBLIP re-alignment starting point",
                "Assembled by train_mblip.py; not trained.",
                [model_args.vision_model_name_or_path, model_args.language_model_name_or_path],
                license=model_args.license,
            )
            save_model_repository(model, processor, init, card, overwrite=True)
            del model
    return str(init)


def quantization_config(model_args: ModelArguments, training_args: TrainingArguments) -> BitsAndBytesConfig | None:
    """QLoRA's bitsandbytes settings: 4-bit computes in the mixed-precision dtype and double-quantizes unless
    --bnb_4bit_use_double_quant false (the official BLOOMZ-7B recipe turns it off); the vision stack stays un-quantized
    (MBlipForConditionalGeneration.from_pretrained)."""
    compute_dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
    return get_quantization_config(
        load_in_8bit=model_args.load_in_8bit,
        load_in_4bit=model_args.load_in_4bit,
        bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=model_args.bnb_4bit_use_double_quant,
    )


PEFT_PREFIX = "base_model.model."


def part_name(name: str) -> str:
    """A parameter's name in the mBLIP model, without the PEFT wrapper's prefix."""
    return name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name


def lora_target_pattern(model: MBlipForConditionalGeneration, leaf_names: list[str] | None) -> str:
    """A regex over module names: the LLM's linear layers (all of them but its output layer, unless names are given),
    found in the loaded LLM itself, and nothing in the vision stack."""
    if not leaf_names:
        output_layer = model.language_model.get_output_embeddings()
        leaf_names = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.language_model.named_modules()
                if isinstance(module, torch.nn.Linear) and module is not output_layer
            }
        )
    if not leaf_names:
        raise ValueError("The language model has no linear layers to put LoRA on")
    return r"language_model\..*\.(?:" + "|".join(map(re.escape, leaf_names)) + ")"


def add_lora(
    model: MBlipForConditionalGeneration,
    model_args: ModelArguments,
    target_pattern: str,
    modules_to_save: list[str] | None = None,
):
    """PEFT's LoRA on the LLM's linear layers only; the vision stack never gets adapters (`modules_to_save`: trained
    modules a saved adapter carries in full, mblip/adapters.py)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=target_pattern,
        bias="none",
        modules_to_save=modules_to_save,
    )
    return get_peft_model(model, config)


def select_trainable(model, model_args: ModelArguments):
    """Exactly what was asked trains: projection unless frozen, Q-Former + queries unless frozen, ViT only on request, and
    of the LLM only its LoRA weights."""
    for full_name, param in model.named_parameters():
        name = part_name(full_name)
        if name.startswith("language_projection."):
            trainable = not model_args.freeze_projection
        elif name.startswith("qformer.") or name == "query_tokens":
            trainable = not model_args.freeze_qformer
        elif name.startswith("vision_model."):
            trainable = model_args.train_vision_model
        else:
            trainable = model_args.use_peft and "lora_" in name
        param.requires_grad_(trainable)


def load_model(model_args: ModelArguments, training_args: TrainingArguments, source: str):
    """The model to train (PEFT-wrapped when LoRA is on), its processor, and the LoRA target pattern."""
    from peft import prepare_model_for_kbit_training

    quantization = quantization_config(model_args, training_args)
    # Each process loads its own copy onto its own GPU (the TRL way); on CPU the model stays where it is built.
    device_map = {"": PartialState().local_process_index} if quantization and torch.cuda.is_available() else None
    model = MBlipForConditionalGeneration.from_pretrained(
        source, quantization_config=quantization, dtype=resolve_dtype(model_args.dtype), device_map=device_map
    )
    if quantization is not None:
        # Casts the LLM's norms to fp32 and freezes it; the vision stack is untouched.
        model.language_model = prepare_model_for_kbit_training(model.language_model, use_gradient_checkpointing=False)
    target_pattern = lora_target_pattern(model, model_args.lora_target_modules) if model_args.use_peft else None
    if model_args.use_peft:
        model = add_lora(model, model_args, target_pattern)
    select_trainable(model, model_args)
    processor = MBlipProcessor.from_pretrained(source)
    return model, processor, target_pattern


def count_parameters(model) -> dict:
    groups = {}
    for name, param in model.named_parameters():
        key = part_name(name).split(".")[0] if "lora_" not in name else "lora"
        total, trainable = groups.get(key, (0, 0))
        groups[key] = (total + param.numel(), trainable + (param.numel() if param.requires_grad else 0))
    return {key: {"parameters": total, "trainable": trainable} for key, (total, trainable) in groups.items()}


# ---------------------------------------------------------------------------------------------------- trainer
class MBlipTrainer(GenerationValidationMixin, Trainer):
    """A Trainer with the paper's per-part learning rates, whose checkpoints hold only the trainable weights (the
    frozen, possibly quantized LLM is never rewritten) plus the usual optimizer, scheduler and RNG states, and whose
    `evaluate()` adds the scores of validation by generation (`validation=`, mblip/validation.py).

    Overrides, and why no public hook replaces them:
    - `create_optimizer`, `compute_loss`, `training_step` are public and documented for subclassing. The optimizer
      builds one group per (learning rate, weight decay) pair; `compute_loss` removes the collator's failed-row
      bookkeeping before the forward pass and `training_step` sums the step losses (RunBookkeeping's inputs).
    - `_save`, `_load_from_checkpoint`, `_load_best_model` are private. The Trainer's checkpoint writes the whole
      model through `save_pretrained` (the frozen LLM, gigabytes and possibly quantized, at every save) and its
      reader expects those files. A callback's `on_save` runs only after that write, and `save_only_model` or
      `save_safetensors` do not narrow what is written, so only these three keep checkpoints to the trainable
      weights. tests/test_train_resume.py pins their behaviour across transformers upgrades.
    """

    def learning_rate_for(self, name: str) -> float:
        name = part_name(name)
        if "lora_" in name:
            return self.args.lora_learning_rate
        if name.startswith("qformer.") or name == "query_tokens":
            return self.args.qformer_learning_rate
        if name.startswith("vision_model."):
            return self.args.vision_learning_rate
        return self.args.learning_rate

    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            decay = set(self.get_decay_parameter_names(opt_model))
            groups = {}
            for name, param in opt_model.named_parameters():
                if param.requires_grad:
                    key = (self.learning_rate_for(name), self.args.weight_decay if name in decay else 0.0)
                    groups.setdefault(key, []).append(param)
            param_groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        failed = inputs.pop(FAILED_ROWS_KEY, None)  # the collator's bookkeeping, not a model input
        placeholder_for = inputs.pop(PLACEHOLDER_KEY, None)
        if failed is not None and model.training:
            self._pending_failed = getattr(self, "_pending_failed", []) + failed.tolist()
        if placeholder_for is not None:
            # No row of this batch could be used (MBlipCollator.placeholder_batch). The forward still runs, so that
            # every trainable weight takes part in the backward as DDP requires, but the loss is an exact zero:
            # the model's own loss over no labelled token would be 0/0. The step's gradients are zero, and under
            # gradient accumulation the other micro-batches' token count is unchanged (no label counts).
            if not model.training:
                logger.warning(
                    "An evaluation batch of %d rows had no usable image: eval_loss counts it as one row of loss 0",
                    int(placeholder_for),
                )
            outputs = model(**inputs)
            loss = outputs.logits.float().sum() * 0.0
            return (loss, outputs) if return_outputs else loss
        return super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        pending = getattr(self, "_pending_loss", None)
        self._pending_loss = loss.detach() if pending is None else pending + loss.detach()
        return loss

    def take_pending(self) -> tuple[list[int], float]:
        """This process's decode failures and summed step losses since the last call (for RunBookkeeping)."""
        failed, loss = getattr(self, "_pending_failed", []), getattr(self, "_pending_loss", None)
        self._pending_failed, self._pending_loss = [], None
        return failed, float(loss) if loss is not None else 0.0

    def _trainable_names(self) -> list[str]:
        model = self.accelerator.unwrap_model(self.model)
        return [name for name, param in model.named_parameters() if param.requires_grad]

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None):
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        names = self._trainable_names()
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        trainable = {name: state_dict[name].detach().cpu().contiguous() for name in names}
        save_file(trainable, os.path.join(output_dir, TRAINABLE_WEIGHTS), metadata={"format": "pt"})

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None):
        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        path = os.path.join(resume_from_checkpoint, TRAINABLE_WEIGHTS)
        if not os.path.isfile(path):
            raise ValueError(
                f"{resume_from_checkpoint} is not a train_mblip.py checkpoint: it has no {TRAINABLE_WEIGHTS}"
            )
        try:
            weights = load_file(path)
        except Exception as err:
            raise ValueError(
                f"{path} is corrupt or incomplete ({type(err).__name__}: {err}); delete {resume_from_checkpoint} "
                "to resume from the checkpoint before it"
            ) from err
        expected = set(self._trainable_names())
        if set(weights) != expected:
            raise ValueError(
                f"Checkpoint {resume_from_checkpoint} trains other weights than this run asks for: missing "
                f"{sorted(expected - set(weights))[:5]}, extra {sorted(set(weights) - expected)[:5]}. Resume with "
                "the same --freeze_qformer / --train_vision_model / --use_peft / LoRA settings."
            )
        model.load_state_dict(weights, strict=False)

    def _load_best_model(self):
        self._load_from_checkpoint(self.state.best_model_checkpoint)


# ---------------------------------------------------------------------------------------------------- output
def trained_state(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().cpu() for name, param in model.named_parameters() if param.requires_grad}


def training_card(
    model_args, data_args, training_args, source, report, metrics, languages, lora_targets, validation=None
):
    """The output's model card (a huggingface_hub ModelCard, from mblip/cards.py); `validation`: the validation
    scores' `EvalResult`s and section text (mblip/validation.py: card_validation), or None."""
    eval_results, validation_text = validation or (None, None)
    bases = (
        [model_args.model_name_or_path]
        if model_args.model_name_or_path
        else [model_args.vision_model_name_or_path, model_args.language_model_name_or_path]
    )
    data = data_args.dataset_name or data_args.train_file
    losses = "\n".join(f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in metrics.items())
    arguments = {
        "model": {k: v for k, v in asdict(model_args).items() if v is not None},
        "data": {k: v for k, v in asdict(data_args).items() if v is not None},
        "training": {
            k: getattr(training_args, k)
            for k in (
                "learning_rate",
                "qformer_learning_rate",
                "lora_learning_rate",
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "num_train_epochs",
                "max_steps",
                "warmup_steps",
                "weight_decay",
                "lr_scheduler_type",
                "seed",
                "bf16",
                "fp16",
                "gradient_checkpointing",
            )
        },
    }
    return model_card(
        title=f"mBLIP re-aligned with train_mblip.py ({Path(training_args.output_dir).name})",
        description=(
            "BLIP-2's ViT and Q-Former re-aligned to a multilingual LLM the mBLIP way (Geigle et al., 2023): "
            "Q-Former, query tokens and a linear projection trained with LoRA on the LLM"
            + (" loaded in 8-bit" if model_args.load_in_8bit else " loaded in 4-bit" if model_args.load_in_4bit else "")
            + ". LoRA is merged into an un-quantized copy of the LLM."
        ),
        base_models=bases,
        license=model_args.license,
        languages=languages,
        datasets=[data_args.dataset_name] if data_args.dataset_name else None,
        repo_id=training_args.hub_model_id or "org/mblip-model",
        eval_results=eval_results,
        sections={
            "Training data": (
                f"`{data}`: {report['train']['rows']} rows, of which {report['train']['bad_rows']} were skipped as "
                f"unusable ({report['train']['by_reason'] or 'none'}), and "
                f"{report.get('decode_failures', 0)} more whose image failed to decode during training. "
                "No image was ever replaced by a placeholder."
            ),
            "Final losses": losses or "- (no losses logged)",
            **({"Validation during training": validation_text} if validation_text else {}),
            "LoRA target modules": ", ".join(lora_targets) if lora_targets else "(no LoRA)",
            "Training arguments": "```json\n" + json.dumps(arguments, indent=2, default=str) + "\n```",
        },
    )


def export(
    trainer, model_args, data_args, training_args, source, report, metrics, languages, target_pattern, validation=None
) -> Path:
    """Writes output_dir as a complete model repository: LoRA merged into an un-quantized copy of the LLM; its card
    holds `validation` (card_validation's scores and text) when given."""
    output_dir = Path(training_args.output_dir)
    state = trained_state(trainer.accelerator.unwrap_model(trainer.model))
    if not trainer.args.should_save:
        return output_dir
    dtype = resolve_dtype(model_args.dtype)
    final = MBlipForConditionalGeneration.from_pretrained(source, dtype=dtype)  # un-quantized
    lora_targets = []
    if model_args.use_peft:
        # A kept adapter carries the trained vision stack too, so that it reloads to this model (mblip/adapters.py).
        final = with_trained_weights(
            final,
            {k: v.to(dtype) for k, v in state.items()},
            lambda model, modules: add_lora(model, model_args, target_pattern, modules),
            complete_adapter=model_args.lora_output != "merged",
        )
        lora_targets = sorted({n.rsplit(".", 1)[-1] for n, m in final.named_modules() if hasattr(m, "lora_A")})
    else:
        result = final.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
        assert not result.unexpected_keys, result.unexpected_keys
    processor = MBlipProcessor.from_pretrained(source)
    card = training_card(
        model_args, data_args, training_args, source, report, metrics, languages, lora_targets, validation
    )
    staging = output_dir / ".model-incomplete"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if model_args.use_peft and model_args.lora_output != "merged":
        save_adapter(final, staging / "adapter", state, base_reference(source))  # PEFT's format, complete
    if model_args.lora_output == "adapter":
        vision_stack = {part_name(k): v.contiguous() for k, v in state.items() if "lora_" not in k}
        save_file(vision_stack, staging / "vision_stack.safetensors", metadata={"format": "pt"})
        card.save(staging / "README.md")
    else:
        if model_args.use_peft:
            final = final.merge_and_unload()
        write_model_repository(
            final,
            processor,
            staging,
            card,
            model_args.max_shard_size,
            extra_files={"data_report.json": json.dumps(report, indent=2)},
        )
    replace_export(staging, output_dir, move_into)  # replaces every file an earlier export wrote, and only those
    return output_dir


def push(training_args: TrainingArguments, output_dir: Path):
    from huggingface_hub import HfApi

    api = HfApi(token=training_args.hub_token)
    repo_id = training_args.hub_model_id or output_dir.name
    api.create_repo(repo_id, private=bool(training_args.hub_private_repo), exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        commit_message="Upload mBLIP trained with train_mblip.py",
        ignore_patterns=["checkpoint-*", f"{INIT_DIR}/*", ".*", "runs/*", f"{VALIDATION_DIR}/*"],
    )
    logger.info("Pushed %s to the Hub as %s", output_dir, repo_id)


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    """Flags, or one .json/.yaml file followed by flags that override it (mblip/arguments.py)."""
    return parse_arguments((ModelArguments, DataArguments, MBlipTrainingArguments), argv)


def setup_logging(training_args: TrainingArguments):
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    level = training_args.get_process_log_level()
    logger.setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def run(model_args: ModelArguments, data_args: DataArguments, training_args: MBlipTrainingArguments, callbacks=None):
    """The whole job; `callbacks` are extra `TrainerCallback`s for programmatic use."""
    setup_logging(training_args)
    logger.warning(
        "Process rank %s, device %s, n_gpu %s, distributed %s, bf16 %s",
        training_args.process_index,
        training_args.device,
        training_args.n_gpu,
        training_args.parallel_mode.value == "distributed",
        training_args.bf16,
    )
    push_to_hub = training_args.push_to_hub
    training_args.push_to_hub = False  # the finished repository is pushed once, below, not every checkpoint
    if training_args.gradient_checkpointing and training_args.gradient_checkpointing_kwargs is None:
        training_args.gradient_checkpointing_kwargs = {"use_reentrant": False}

    if data_args.augment and training_args.dataloader_persistent_workers:
        raise ValueError(
            "--augment with --dataloader_persistent_workers: persistent workers keep the epoch they started in, so "
            "every epoch would crop each row alike. Drop one of the two."
        )

    if training_args.dataloader_num_workers > 0 and training_args.dataloader_multiprocessing_context is None:
        # Data-loading workers start as every PyTorch DataLoader's did on Linux before Python 3.14: forked, in
        # milliseconds. Under a fork server (3.14's default) or spawn each worker imports torch, transformers and this
        # package before its first batch, 13 s for two workers on 2 cores (BENCHMARKS.md, data_scale), and with
        # --augment (no persistent workers) again at every epoch. Not a run setting: resuming ignores it.
        training_args.dataloader_multiprocessing_context = fork_start_method()

    # ---- resume: only complete checkpoints count, and only of the same run (mblip/checkpoints.py)
    output_dir, is_main = training_args.output_dir, PartialState().is_main_process
    with training_args.main_process_first(desc="checking output_dir"):
        fingerprint = run_fingerprint(model_args, data_args, training_args)
        run_state = prepare_output_dir(output_dir, fingerprint, training_args.overwrite, is_main)
        if run_state["finished"]:
            logger.warning(
                "%s already holds this run, trained and exported: nothing to do (%s trains it again)",
                output_dir,
                OVERWRITE_FLAG,
            )
            return None, {}
        refuse_user_files(output_dir, EXPORT_NAMES)  # fail now, not after training
        last_checkpoint = training_args.resume_from_checkpoint
        if last_checkpoint is None:
            last_checkpoint = last_complete_checkpoint(output_dir, TRAINABLE_WEIGHTS, remove=is_main)
        elif problem := checkpoint_problem(last_checkpoint, TRAINABLE_WEIGHTS):
            raise ValueError(f"--resume_from_checkpoint {last_checkpoint} is incomplete: {problem}")
    trained_out = False
    if last_checkpoint is not None:
        saved = read_checkpoint_state(last_checkpoint)
        trained_out = saved["global_step"] >= saved.get("max_steps", 0) > 0
        logger.info("Resuming from the last complete checkpoint: %s (step %d)", last_checkpoint, saved["global_step"])
    set_seed(training_args.seed)

    # ---- data: any form, each distinct image checked once (cached); or a stream checked as it is read
    train_dataset, eval_dataset, report, languages, callbacks = prepare_data(
        data_args, training_args, last_checkpoint, callbacks, read_jsonl=load_jsonl
    )

    # ---- model
    source = model_args.model_name_or_path or assemble_init(model_args, training_args.output_dir, training_args.seed)
    model, processor, target_pattern = load_model(model_args, training_args, source)
    processor.max_length = data_args.max_length or None  # 0: no limit of our own
    logger.info("Parameters per part: %s", json.dumps(count_parameters(model)))

    # ---- train
    features = None
    if data_args.image_features_cache:
        if model_args.train_vision_model:
            raise ValueError("--image_features_cache needs a frozen ViT; it cannot go with --train_vision_model")
        with training_args.main_process_first(desc="caching image features"):
            batch_size = max(training_args.per_device_train_batch_size, training_args.per_device_eval_batch_size)
            features = build_image_features_cache(
                model, processor, [d for d in (train_dataset, eval_dataset) if d is not None], data_args, batch_size
            )
    collator = MBlipCollator(
        processor, data_args, augment=data_args.augment, features=features, seed=training_args.seed
    )
    trainer = MBlipTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        callbacks=callbacks,
        validation=GenerationValidation.from_arguments(data_args, processor, training_args.per_device_eval_batch_size),
    )
    bookkeeping = RunBookkeeping(trainer, report["train"]["rows"], report["train"]["bad_rows"], data_args.max_bad_rows)
    trainer.add_callback(bookkeeping)
    trainer.add_callback(EpochForAugmentation(collator))
    if trained_out:
        # Training had finished (the run was killed during its export, say): export the last checkpoint as it is.
        logger.warning("%s is the end of training: exporting it without training further", last_checkpoint)
        trainer._load_from_checkpoint(last_checkpoint)
        trainer.state = TrainerState.load_from_json(os.path.join(last_checkpoint, "trainer_state.json"))
        bookkeeping.restore(trainer.state.stateful_callbacks.get(type(bookkeeping).__name__))
        result_metrics = {"train_loss": bookkeeping.loss_sum / max(trainer.state.global_step, 1)}
    else:
        result = trainer.train(resume_from_checkpoint=last_checkpoint)
        result_metrics = dict(result.metrics)
        # The Trainer's train_loss covers only this call's steps; after a resume, report the whole run's mean.
        result_metrics["train_loss"] = bookkeeping.train_loss(result.training_loss, trainer.state.global_step)
        if trainer.state.log_history and "train_loss" in trainer.state.log_history[-1]:
            trainer.state.log_history[-1]["train_loss"] = result_metrics["train_loss"]
    metrics = {k: v for k, v in result_metrics.items() if "loss" in k}
    final_evaluation = {}
    if eval_dataset is not None or trainer.validation is not None:
        final_evaluation = trainer.evaluate()
        metrics.update({k: v for k, v in final_evaluation.items() if "loss" in k})
    trainer.log_metrics("train", result_metrics)
    trainer.save_metrics("all", {**result_metrics, **metrics})
    trainer.save_state()
    report["decode_failures"] = len(bookkeeping.failed_rows)  # distinct rows, all processes and workers
    if report["decode_failures"]:
        report["decode_failure_rows"] = sorted(bookkeeping.failed_rows)[:20]
        logger.warning("%d rows were skipped because their image failed to decode", report["decode_failures"])

    # ---- output
    # The validation scores (final and best evaluations) go into the card's results table and model-index.
    validation = card_validation(trainer, final_evaluation)
    output_dir = export(
        trainer, model_args, data_args, training_args, source, report, metrics, languages, target_pattern, validation
    )
    if is_main:
        mark_finished(output_dir, {"global_step": trainer.state.global_step})
    if push_to_hub and training_args.should_save:
        push(training_args, output_dir)
    return trainer, report


def main(argv=None, callbacks=None):
    if not torch.accelerator.is_available():
        # Without any accelerator, `accelerate launch --multi_gpu` processes must join a CPU (gloo) group. accelerate
        # forms one only when told to use the CPU, before TrainingArguments creates the process state while parsing.
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    model_args, data_args, training_args = parse_args(argv)
    return run(model_args, data_args, training_args, callbacks=callbacks)
