"""Build mBLIP's multilingual task mix: English vision-and-language examples in, translated instruction mix out.

    python -m mblip.data.translate --input en.jsonl --output mix/ --languages all \\
        --model facebook/nllb-200-distilled-1.3B

    accelerate launch -m data.translate --input en.jsonl --output mix/      # data-parallel over all GPUs

Each example gets a target language (temperature sampling over mC4 sizes with a per-language floor by default; the
paper's mC4-proportional split with ``--sampling mc4``), its text fields are machine-translated with NLLB, the
translations are filtered, and the example is rendered into the ``image_id``/``context``/``label`` columns that
train_mblip.py reads, plus ``lang`` and ``task``. Arguments can also come from one JSON or YAML file, with flags
after it overriding it: ``python -m mblip.data.translate mix.yaml --output mix-v2/``.

Work is split into shards of one language each. A shard is written atomically with a done-marker; a killed run
restarted with the same command skips finished shards and produces no duplicates. The final file (``train.jsonl`` or
``train.parquet``) and ``report.json`` (filter counts per language and reason, malformed rows) are written once all
shards are done.

Two engines translate. ``--engine ctranslate2`` (the default, ``auto``, where the ctranslate2 package is installed)
converts the model once with CTranslate2's own converter, caches the copy, and decodes at ``--compute_type``
(default: float32 on CPU, bfloat16 on CUDA; int8 is faster and changes some outputs). ``--engine transformers``
runs ``generate``. Both share batching, budgets, filters, sharding and resumption, and in float32 give the same
translations up to near-ties (BENCHMARKS.md). A run resumes only with the engine and compute type it started with.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
import re
import shutil
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from mblip.bad_rows import check_threshold
from mblip.outputs import (
    atomic_write_json,
    check_settings,
    mark_done,
    model_identity,
    read_done,
    read_json,
    read_jsonl,
    remove_stale_temporaries,
    write_jsonl,
)

from .filters import FilterConfig, FilterReport, check_fields, check_translation
from .inputs import Columns, Example, check_malformed, input_fingerprint, load_examples
from .languages import (
    DEFAULT_TEMPERATURE,
    ENGLISH,
    LANGUAGE_BY_CODE,
    NO_SPACE_LANGUAGES,
    SAMPLING_RULES,
    assign_languages,
    get_language,
    parse_languages,
    plan_language_counts,
    stable_seed,
)
from .storage import write_final_jsonl, write_final_parquet
from .templates import (
    TASKS,
    LanguageTemplates,
    build_language_templates,
    decode_placeholders,
    encode_placeholders,
    parse_match_label,
    phrases_to_translate,
    render_example,
    resolve_task,
    tasks_message,
    use_translation,
)


logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
OUTPUT_FORMATS = ("jsonl", "parquet")
ENGINES = ("auto", "transformers", "ctranslate2")
CT2_COMPUTE_TYPES = ("float32", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16")
CT2_INSTALL = "pip install ctranslate2 (CPU and CUDA 12 wheels on PyPI)"


# ================================================================================================================
# Arguments
# ================================================================================================================


@dataclass
class DataArguments:
    input: str = field(
        metadata={"help": "English examples: .jsonl, .json, .csv, .parquet, or a save_to_disk directory."}
    )
    output: str = field(metadata={"help": "Output directory: shards, templates, the final mix and report.json."})
    input_split: str = field(default="train", metadata={"help": "Split to read when --input is a saved DatasetDict."})
    image_column: str = field(
        default="image_id", metadata={"help": "Column with the image path (relative to an image root)."}
    )
    context_column: str = field(
        default="context",
        metadata={
            "help": "Column with the question (vqa, vqa_rationale), instruction, or caption to match; unused for caption/classification."
        },
    )
    target_column: str = field(
        default="label", metadata={"help": "Column with the target: caption, answer, response, yes/no, class name."}
    )
    rationale_column: str = field(default="rationale", metadata={"help": "Column with the rationale (vqa_rationale)."})
    task_column: str = field(default="task", metadata={"help": "Column with each row's task."})
    task: str | None = field(
        default=None, metadata={"help": f"Task of rows without a task column. Tasks: {tasks_message()}."}
    )
    max_rows: int | None = field(default=None, metadata={"help": "Read only the first N rows (smoke runs)."})
    max_bad_rows: float = field(
        default=0.01, metadata={"help": "Fail when more than this fraction of rows is malformed."}
    )
    output_format: str = field(default="jsonl", metadata={"help": "Final file format: jsonl or parquet."})
    output_name: str = field(default="train", metadata={"help": "Final file name, without extension."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Discard a previous run in --output instead of resuming it.",
            "aliases": ["--overwrite_output_dir"],  # its name before 0.3, deprecated
        },
    )

    def __post_init__(self):
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"--output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}.")
        check_threshold(self.max_bad_rows)
        if self.task is not None and resolve_task(self.task) is None:
            raise ValueError(f"Unknown --task {self.task!r}. Tasks: {tasks_message()}.")
        if self.max_rows is not None and self.max_rows <= 0:
            raise ValueError(f"--max_rows must be positive, got {self.max_rows}.")
        if not self.output_name or "/" in self.output_name:
            raise ValueError(f"--output_name must be a plain file name, got {self.output_name!r}.")

    def columns(self) -> Columns:
        return Columns(
            self.image_column, self.context_column, self.target_column, self.task_column, self.rationale_column
        )


@dataclass
class LanguageArguments:
    languages: str = field(
        default="all", metadata={"help": "'all' (mBLIP's 95) or comma-separated ISO codes, e.g. 'de,fr,sw'."}
    )
    sampling: str = field(
        default="temperature",
        metadata={
            "help": "temperature: p ∝ mC4_size^(1/T) with a floor; mc4: the paper's mC4-proportional split; uniform."
        },
    )
    temperature: float = field(
        default=DEFAULT_TEMPERATURE, metadata={"help": "T of temperature sampling (default: mT5's 1/0.3)."}
    )
    language_floor: float = field(
        default=0.5,
        metadata={
            "help": "Each language gets at least this fraction of its uniform share of the translated examples (0 = no floor)."
        },
    )
    min_examples_per_language: int = field(
        default=0,
        metadata={"help": "Each language gets at least this many examples per task (0 = off); fails if impossible."},
    )
    english_share: float | None = field(
        default=None,
        metadata={
            "help": "Fraction kept in English, untranslated (default: mC4's English share, 0.438, as in the paper; 1.0 = English-only pivot)."
        },
    )
    translated_prompt_share: float | None = field(
        default=None,
        metadata={
            "help": "Share of prompts from translated templates; the rest name the language in English. Default: the paper's uniform mix over both."
        },
    )
    translated_label_share: float = field(
        default=0.5,
        metadata={
            "help": "VQA and question generation: share of examples whose short answer is translated (when the translation passes the filters and differs); the rest keep the English answer, as in the official code (0.5)."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed of language, template and shard assignment."})

    def __post_init__(self):
        self.language_codes = parse_languages(self.languages)
        if self.sampling not in SAMPLING_RULES:
            raise ValueError(f"--sampling must be one of {', '.join(SAMPLING_RULES)}, got {self.sampling!r}.")
        if not self.temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}.")
        if not 0 <= self.language_floor <= 1:
            raise ValueError(
                f"--language_floor is a fraction of the uniform share in [0, 1], got {self.language_floor}."
            )
        if self.min_examples_per_language < 0:
            raise ValueError(f"--min_examples_per_language must be >= 0, got {self.min_examples_per_language}.")
        for name in ("english_share", "translated_prompt_share", "translated_label_share"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"--{name} must be within [0, 1], got {value}.")


@dataclass
class TranslationArguments:
    model: str = field(
        default="facebook/nllb-200-distilled-1.3B", metadata={"help": "Seq2seq translation model (name or path)."}
    )
    src_lang: str = field(
        default="eng_Latn", metadata={"help": "Source-language code of the tokenizer (NLLB: eng_Latn, M2M100: en)."}
    )
    lang_token_format: str = field(
        default="nllb",
        metadata={
            "help": "Target-language BOS token: 'nllb' (deu_Latn) or a format with {iso}/{nllb}, e.g. '__{iso}__' for M2M100."
        },
    )
    batch_size: int = field(default=64, metadata={"help": "Sentences per generate call."})
    num_beams: int = field(default=1, metadata={"help": "Beam size (1 = greedy, as the official scripts)."})
    max_len_a: float = field(
        default=2.0, metadata={"help": "Token budget per sentence: max_len_a * source tokens + max_len_b."}
    )
    max_len_b: int = field(default=10, metadata={"help": "See --max_len_a."})
    max_new_tokens: int = field(default=256, metadata={"help": "Hard cap on new tokens per sentence."})
    max_source_length: int = field(
        default=256, metadata={"help": "Longer source sentences are not translated (counted)."}
    )
    split_sentences: bool = field(
        default=True, metadata={"help": "Translate multi-sentence texts sentence by sentence."}
    )
    bf16: bool = field(
        default=True,
        metadata={"help": "bfloat16 on CUDA (ignored on CPU); with ctranslate2, the default --compute_type there."},
    )
    engine: str = field(
        default="auto",
        metadata={
            "help": "transformers (generate), ctranslate2 (CTranslate2: the model is converted once and cached), or "
            "auto: ctranslate2 when installed, else transformers. Resuming with another engine is refused."
        },
    )
    compute_type: str | None = field(
        default=None,
        metadata={
            "help": f"CTranslate2 compute type, of {', '.join(CT2_COMPUTE_TYPES)}. Default: the transformers "
            "engine's precision (float32 on CPU, bfloat16 on CUDA with --bf16); int8 (CPU) and int8_float16 (CUDA) "
            "are faster and change some outputs."
        },
    )
    ctranslate2_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where converted models are kept (default: huggingface_hub's assets cache, mblip/ctranslate2)."
        },
    )
    shard_size: int = field(default=10_000, metadata={"help": "Examples per shard, the unit of resumption."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        for name in ("batch_size", "num_beams", "max_new_tokens", "max_source_length", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if self.max_len_a < 0 or self.max_len_b < 0:
            raise ValueError(f"--max_len_a and --max_len_b must be >= 0, got {self.max_len_a} and {self.max_len_b}.")
        if self.lang_token_format != "nllb" and not re.search(r"\{(iso|nllb)\}", self.lang_token_format):
            raise ValueError(
                f"--lang_token_format must be 'nllb' or contain {{iso}} or {{nllb}}, got {self.lang_token_format!r}."
            )
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}.")
        # Resolved here, so that the run config records the engine that ran, and a resumption with another refuses.
        if self.engine == "auto":
            self.engine = "ctranslate2" if ctranslate2_available() else "transformers"
        elif self.engine == "ctranslate2":
            import_ctranslate2()  # how to get it, before any work
        if self.compute_type is not None:
            if self.engine != "ctranslate2":
                installed = "" if ctranslate2_available() else f" (ctranslate2 is not installed: {CT2_INSTALL})"
                raise ValueError(
                    f"--compute_type is a CTranslate2 setting, but the engine is {self.engine}{installed}."
                )
            if self.compute_type not in CT2_COMPUTE_TYPES:
                raise ValueError(
                    f"--compute_type must be one of {', '.join(CT2_COMPUTE_TYPES)}, got {self.compute_type!r}."
                )

    def resolve_compute_type(self, device: torch.device | str) -> None:
        """The CTranslate2 default depends on the device: fixed before the run config records it."""
        if self.engine == "ctranslate2" and self.compute_type is None:
            self.compute_type = default_compute_type(device, self.bf16)


# Options that do not change the output: they may differ between a run and its resumption (a smaller batch after an
# out-of-memory error, another output format).
RESUME_INSENSITIVE = {
    "batch_size",
    "progress",
    "output_format",
    "output_name",
    "max_bad_rows",
    "overwrite",
    "ctranslate2_cache_dir",
}


# ================================================================================================================
# Translation engine
# ================================================================================================================


class Translation(NamedTuple):
    text: str | None
    status: str  # ok | truncated | source_too_long


class LengthCapLogitsProcessor(LogitsProcessor):
    """Ends row i after ``caps[i]`` new tokens by forcing EOS.

    The budget depends on the sentence alone (fairseq's max_len_a * source + max_len_b), so a sentence's translation
    does not depend on its batch neighbours, and a decoder stuck in a loop stops early instead of running to a global
    maximum. The batch still decodes until its longest budget: length-sorted batches keep these budgets similar.
    """

    def __init__(self, caps: torch.Tensor, eos_token_id: int):
        self.caps = caps
        self.eos_token_id = eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        caps = self.caps.to(scores.device)
        if caps.shape[0] != scores.shape[0]:  # beam search: each row's beams are contiguous
            caps = caps.repeat_interleave(scores.shape[0] // caps.shape[0])
        # The decoder prompt is the single decoder-start token; this step produces new token number (len - 1) + 1.
        done = caps <= input_ids.shape[-1]
        if done.any():
            scores = scores.clone()
            scores[done] = -float("inf")
            scores[done, self.eos_token_id] = 0.0
        return scores


class Translator:
    """Translates English sentences with a seq2seq model whose target language is a forced BOS token (NLLB, M2M100).

    Sentences are deduplicated, tokenized once, sorted by length (longest first, so an out-of-memory error shows up in
    the first batch), translated in batches and put back in order.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        src_lang: str = "eng_Latn",
        lang_token_format: str = "nllb",
        batch_size: int = 64,
        num_beams: int = 1,
        max_len_a: float = 2.0,
        max_len_b: int = 10,
        max_new_tokens: int = 256,
        max_source_length: int = 256,
        sort_by_length: bool = True,
        show_progress: bool = True,
    ):
        self.model = self._prepare(model)
        self.tokenizer = tokenizer
        if hasattr(tokenizer, "src_lang"):
            tokenizer.src_lang = src_lang
        else:
            logger.warning(
                "Tokenizer %s has no src_lang: sources are encoded without a language token.", type(tokenizer).__name__
            )
        self.lang_token_format = lang_token_format
        self.batch_size = batch_size
        self.num_beams = num_beams
        self.max_len_a = max_len_a
        self.max_len_b = max_len_b
        self.max_new_tokens = max_new_tokens
        self.max_source_length = max_source_length
        self.sort_by_length = sort_by_length
        self.show_progress = show_progress
        self.eos_token_id = self._end_token_id(model, tokenizer)
        self.generate_calls = 0
        self.sentences_translated = 0

    engine = "transformers"

    @staticmethod
    def _prepare(model):
        return model.eval()

    @staticmethod
    def _end_token_id(model, tokenizer) -> int:
        eos = model.generation_config.eos_token_id
        return eos[0] if isinstance(eos, (list, tuple)) else eos

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, device: torch.device | str = "cpu", bf16: bool = True, **kwargs
    ) -> Translator:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        device = torch.device(device)
        # bf16 halves memory and doubles throughput on GPUs; on CPU it is slow and changes outputs, so float32 there.
        dtype = torch.bfloat16 if bf16 and device.type == "cuda" else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, src_lang=kwargs.get("src_lang", "eng_Latn"))
        model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path, dtype=dtype).to(device)
        logger.info("Loaded %s on %s (%s).", name_or_path, device, dtype)
        return cls(model, tokenizer, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def target_token(self, code: str) -> str:
        language = get_language(code)
        if self.lang_token_format == "nllb":
            return language.nllb
        return self.lang_token_format.format(iso=language.code, nllb=language.nllb)

    def target_token_id(self, code: str) -> int:
        token = self.target_token(code)
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no target-language token {token!r} for {code!r}.")
        return token_id

    def check_languages(self, codes: Sequence[str]) -> None:
        """Fail before any translation when the model lacks one of the target languages."""
        missing = []
        for code in codes:
            try:
                self.target_token_id(code)
            except ValueError:
                missing.append(f"{code} ({self.target_token(code)})")
        if missing:
            raise ValueError(
                f"The translation model's tokenizer has no target-language token for: {', '.join(missing)}. "
                "Check --model and --lang_token_format, or drop these languages from --languages."
            )

    def budgets(self, lengths: Sequence[int]) -> list[int]:
        # At least 2: the forced language token plus one more.
        return [max(2, min(self.max_new_tokens, math.ceil(self.max_len_a * n + self.max_len_b))) for n in lengths]

    def generation_kwargs(self, token_id: int, caps: Sequence[int]) -> dict:
        return dict(
            forced_bos_token_id=token_id,
            max_new_tokens=max(caps),
            num_beams=self.num_beams,
            do_sample=False,
            logits_processor=LogitsProcessorList([LengthCapLogitsProcessor(torch.tensor(caps), self.eos_token_id)]),
        )

    @torch.inference_mode()
    def generate_ids(self, input_ids: Sequence[Sequence[int]], token_id: int) -> list[tuple[list[int], bool]]:
        """Each sentence's new tokens (target-language token first, EOS left out) and whether it used up its budget.

        The engine's one job: subclasses run another engine with the same decoding settings (CTranslate2Translator).
        """
        caps = self.budgets([len(ids) for ids in input_ids])
        batch = self.tokenizer.pad({"input_ids": [list(ids) for ids in input_ids]}, return_tensors="pt").to(self.device)
        self.generate_calls += 1
        out = self.model.generate(**batch, **self.generation_kwargs(token_id, caps))
        results = []
        for row, cap in zip(out.tolist(), caps, strict=True):
            # row[0] is the decoder start token; the first EOS after it ends the translation.
            end = next((i for i in range(1, len(row)) if row[i] == self.eos_token_id), None)
            results.append((row[1:end], end is None or end >= cap))
        return results

    def generate_batch(self, input_ids: Sequence[Sequence[int]], token_id: int) -> list[Translation]:
        """Translate one batch of tokenized sentences (no sorting here)."""
        outputs = self.generate_ids(input_ids, token_id)
        texts = self.tokenizer.batch_decode([ids for ids, _ in outputs], skip_special_tokens=True)
        return [
            Translation(text.strip(), "truncated" if truncated else "ok")
            for text, (_, truncated) in zip(texts, outputs, strict=True)
        ]

    def translate(self, texts: Sequence[str], language: str, desc: str | None = None) -> list[Translation]:
        """Translate ``texts`` from English into ``language`` (an ISO code of the table)."""
        from tqdm.auto import tqdm

        if not texts:
            return []
        token_id = self.target_token_id(language)
        unique = list(dict.fromkeys(texts))
        encoded = self.tokenizer(unique, add_special_tokens=True)["input_ids"]
        results: dict[str, Translation] = {}
        todo = []
        for text, ids in zip(unique, encoded, strict=True):
            if len(ids) > self.max_source_length:
                results[text] = Translation(None, "source_too_long")
            else:
                todo.append((text, ids))
        if self.sort_by_length:
            todo.sort(key=lambda item: -len(item[1]))  # stable: equal lengths keep input order
        with tqdm(
            total=len(todo),
            desc=desc or f"translate -> {language}",
            unit="sent",
            leave=False,
            disable=not self.show_progress,
        ) as bar:
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                for (text, _), translation in zip(
                    chunk, self.generate_batch([ids for _, ids in chunk], token_id), strict=True
                ):
                    results[text] = translation
                bar.update(len(chunk))
        self.sentences_translated += len(todo)
        return [results[text] for text in texts]


# ---- CTranslate2 ------------------------------------------------------------------------------------------------


def ctranslate2_available() -> bool:
    return importlib.util.find_spec("ctranslate2") is not None


def import_ctranslate2():
    try:
        import ctranslate2
    except ImportError as error:
        raise ValueError(
            f"--engine ctranslate2 needs the ctranslate2 package: {CT2_INSTALL}; or use --engine transformers."
        ) from error
    return ctranslate2


def default_compute_type(device: torch.device | str, bf16: bool = True) -> str:
    """The transformers engine's precision on the same device, so that switching engines keeps the outputs: float32
    on CPU (where its outputs are the transformers engine's), bfloat16 on CUDA with --bf16. Faster and further from
    them: int8 (CPU), int8_float16 (CUDA)."""
    return "bfloat16" if bf16 and torch.device(device).type == "cuda" else "float32"


def check_compute_type(device: torch.device | str, compute_type: str) -> None:
    """A clear error, before any conversion, when this machine cannot run the engine at this compute type."""
    ctranslate2 = import_ctranslate2()
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"CTranslate2 runs on cpu and cuda, not {kind}; use --engine transformers.")
    if kind == "cuda" and ctranslate2.get_cuda_device_count() == 0:
        raise ValueError(
            f"CTranslate2 {ctranslate2.__version__} sees no CUDA device (a CPU-only build, or a CUDA version it does "
            f"not support); on cpu it supports: {', '.join(sorted(ctranslate2.get_supported_compute_types('cpu')))}. "
            "Use --engine transformers on this GPU."
        )
    supported = sorted(ctranslate2.get_supported_compute_types(kind))
    if compute_type not in supported:
        raise ValueError(
            f"--compute_type {compute_type} cannot run on {kind} here; CTranslate2 supports: {', '.join(supported)}."
        )


def _model_fingerprint(name_or_path: str) -> tuple[str, str | None]:
    """(mblip.outputs.model_identity, Hub revision). A Hub id is resolved first, so that the identity names the
    commit the Hub (or, offline, the cache) serves now, and an updated model is converted again."""
    revision = None
    if not Path(name_or_path).is_dir():
        from huggingface_hub import hf_hub_download

        revision = Path(hf_hub_download(name_or_path, "config.json")).parent.name  # snapshots/<commit>/config.json
    return model_identity(name_or_path), revision


def ctranslate2_model(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The CTranslate2 copy of a Transformers checkpoint, converted by CTranslate2's own converter on first use and
    reused afterwards.

    The copy is keyed by a fingerprint of the source (its files' content, or its Hub commit) and the CTranslate2
    version, so an edited or updated model is converted again. Weights keep the checkpoint's precision; the compute
    type is chosen when loading, so one copy serves every --compute_type. A file lock makes data-parallel processes
    convert once; the copy is written to a temporary folder and renamed, so a killed conversion leaves no half copy.
    """
    ctranslate2 = import_ctranslate2()
    from ctranslate2.converters import TransformersConverter
    from filelock import FileLock
    from huggingface_hub import cached_assets_path

    fingerprint, revision = _model_fingerprint(str(name_or_path))
    key = hashlib.sha256(f"{fingerprint} ctranslate2-{ctranslate2.__version__}".encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir else cached_assets_path("mblip", namespace="ctranslate2")
    name = Path(name_or_path).resolve().name if Path(name_or_path).is_dir() else str(name_or_path).replace("/", "--")
    target = root / f"{name}-{key}"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if (target / "model.bin").is_file():
            logger.info("Using the CTranslate2 copy of %s in %s.", name_or_path, target)
            return target
        for stale in root.glob(f".{target.name}.*.tmp"):  # a conversion killed before its rename
            shutil.rmtree(stale, ignore_errors=True)
        partial = root / f".{target.name}.{os.getpid()}.tmp"
        logger.info("Converting %s for CTranslate2 %s into %s (once).", name_or_path, ctranslate2.__version__, target)
        try:
            TransformersConverter(str(name_or_path), revision=revision).convert(str(partial), force=True)
        except Exception as error:  # noqa: BLE001 - CTranslate2's reason goes to the user
            shutil.rmtree(partial, ignore_errors=True)
            raise ValueError(
                f"CTranslate2 cannot convert {name_or_path}: {error}\nUse --engine transformers for this model."
            ) from error
        atomic_write_json(
            partial / "mblip_source.json",
            {"source": str(name_or_path), "fingerprint": fingerprint, "ctranslate2": ctranslate2.__version__},
        )
        os.replace(partial, target)
    return target


def _or(value, default):
    return default if value is None else value


class CTranslate2Translator(Translator):
    """The same translator on CTranslate2, the inference engine made for NLLB-class models.

    Everything but the decoding is shared with the transformers engine: tokenizer, deduplication, length-sorted
    batches, budgets, statuses. Decoding uses the same settings: greedy or beam search of the same size, the model's
    length and repetition penalties, the forced target-language token as target prefix, and each sentence's own
    budget (a batch decodes to its longest budget, and each sentence is cut at its own: for greedy search exactly
    what the transformers engine's forced EOS does). In float32 on CPU its outputs are the transformers engine's up
    to near-ties of the two engines' arithmetic (BENCHMARKS.md counts them); with beam search the two
    implementations can also rank finished hypotheses differently.

    Where the time goes: on CPU in float32, about three quarters in the matrix products' kernels and most of the rest
    in extending the key/value cache; tokenization and the Python around the call take about 1 %. So its lead over
    ``generate`` is ``generate``'s per-step Python overhead, large for small models and shrinking as the products
    grow, plus the sentences that ended at EOS, which it stops computing and ``generate`` keeps as padding. int8 does
    less arithmetic: the fast setting on CPU.
    """

    engine = "ctranslate2"

    def __init__(
        self,
        model,
        tokenizer,
        *,
        compute_type: str = "float32",
        length_penalty: float = 1.0,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        **kwargs,
    ):
        super().__init__(model, tokenizer, **kwargs)
        self.compute_type = compute_type
        self.length_penalty = length_penalty
        self.repetition_penalty = repetition_penalty
        self.no_repeat_ngram_size = no_repeat_ngram_size

    @staticmethod
    def _prepare(model):
        return model

    @staticmethod
    def _end_token_id(model, tokenizer) -> int:
        return tokenizer.eos_token_id  # the converter takes the end token from the tokenizer

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        device: torch.device | str = "cpu",
        bf16: bool = True,
        compute_type: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        **kwargs,
    ) -> CTranslate2Translator:
        from transformers import AutoTokenizer, GenerationConfig

        ctranslate2 = import_ctranslate2()
        device = torch.device(device)
        compute_type = compute_type or default_compute_type(device, bf16)
        check_compute_type(device, compute_type)
        path = ctranslate2_model(name_or_path, cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, src_lang=kwargs.get("src_lang", "eng_Latn"))
        try:
            generation = GenerationConfig.from_pretrained(name_or_path)
        except OSError:  # no generation_config.json: transformers' defaults, as generate uses
            generation = GenerationConfig()
        model = ctranslate2.Translator(
            str(path),
            device=device.type,
            device_index=device.index or 0,
            compute_type=compute_type,
            # The transformers engine's thread count: data-parallel CPU processes must not oversubscribe the cores.
            intra_threads=torch.get_num_threads() if device.type == "cpu" else 0,
        )
        logger.info("Loaded %s with CTranslate2 on %s (%s).", name_or_path, device, compute_type)
        return cls(
            model,
            tokenizer,
            compute_type=compute_type,
            # Unset (None) means generate's defaults: no penalty.
            length_penalty=_or(generation.length_penalty, 1.0),
            repetition_penalty=_or(generation.repetition_penalty, 1.0),
            no_repeat_ngram_size=_or(generation.no_repeat_ngram_size, 0),
            **kwargs,
        )

    @property
    def device(self) -> torch.device:
        return torch.device(self.model.device, self.model.device_index[0] if self.model.device == "cuda" else None)

    def generate_ids(self, input_ids: Sequence[Sequence[int]], token_id: int) -> list[tuple[list[int], bool]]:
        caps = self.budgets([len(ids) for ids in input_ids])
        prefix = [self.tokenizer.convert_ids_to_tokens(token_id)]
        # Greedy search never needs new token number cap: the budget allows it only as EOS, and a sentence that gets
        # there is truncated whatever the model writes. Beam search decodes it, as generate does, to rank hypotheses.
        # (Stopping each sentence at its own budget, with translate_batch's per-token callback, costs 15-40 us of
        # Python per token: measured, it slowed d_model 64 by a third, was even at 256 and gained only at 1024, where
        # every sentence of the random model runs to its budget; a real model's sentences end at EOS, which
        # CTranslate2 drops from the batch by itself.)
        max_length = max(caps) - 1 if self.num_beams == 1 else max(caps)
        self.generate_calls += 1
        results = self.model.translate_batch(
            [self.tokenizer.convert_ids_to_tokens(list(ids)) for ids in input_ids],
            target_prefix=[prefix] * len(input_ids),
            beam_size=self.num_beams,
            length_penalty=self.length_penalty,
            repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            max_decoding_length=max_length,  # counts the target-language token, as the budgets do
            max_input_length=0,  # sources were checked against --max_source_length already
            return_end_token=True,
        )
        outputs = []
        for result, cap in zip(results, caps, strict=True):
            ids = self.tokenizer.convert_tokens_to_ids(result.hypotheses[0])
            # New token number cap is the last one the budget allows, and only as EOS (see LengthCapLogitsProcessor).
            end = ids.index(self.eos_token_id) + 1 if self.eos_token_id in ids else len(ids) + 1
            outputs.append((ids[: min(end, cap) - 1], end >= cap))
        return outputs


# ================================================================================================================
# Sentence splitting
# ================================================================================================================

# A sentence ends at . ! ? followed by space and an upper-case letter, digit or quote; newlines always split. NLLB is
# trained on single sentences and tends to drop the tail of long multi-sentence inputs.
_SENTENCE_END = re.compile(r"(?<=[.!?])([ \t]+)(?=[A-Z0-9\"'(])|(\s*\n\s*)")


def split_sentences(text: str) -> tuple[list[str], list[str]]:
    """Sentences and the separators between them (len(seps) == len(sentences) - 1)."""
    sentences, separators, start = [], [], 0
    for match in _SENTENCE_END.finditer(text):
        piece = text[start : match.start()]
        if piece.strip():
            sentences.append(piece.strip())
            separators.append(match.group(0))
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    elif separators:
        separators.pop()
    return sentences, separators


def join_sentences(sentences: Sequence[str], separators: Sequence[str], language: str) -> str:
    parts = [sentences[0]]
    for sep, sentence in zip(separators, sentences[1:], strict=True):
        if "\n" in sep:
            parts.append("\n" * sep.count("\n"))
        else:
            parts.append("" if language in NO_SPACE_LANGUAGES else " ")
        parts.append(sentence)
    return "".join(parts)


_STATUS_RANK = {"ok": 0, "truncated": 1, "source_too_long": 2}


def translate_fields(
    translator: Translator, texts: Sequence[str], language: str, split: bool, desc: str
) -> list[Translation]:
    """Translate whole texts, sentence by sentence when ``split``; a text's status is its worst sentence's."""
    pieces = [split_sentences(text) if split else ([text], []) for text in texts]
    flat = [sentence for sentences, _ in pieces for sentence in sentences]
    translated = iter(translator.translate(flat, language, desc=desc))
    results = []
    for sentences, separators in pieces:
        parts = [next(translated) for _ in sentences]
        status = max((p.status for p in parts), key=_STATUS_RANK.__getitem__, default="ok")
        if not parts:
            results.append(Translation("", "ok"))  # nothing to translate: the filters call it empty
            continue
        if status == "source_too_long":
            results.append(Translation(None, status))
            continue
        results.append(Translation(join_sentences([p.text for p in parts], separators, language), status))
    return results


# ================================================================================================================
# Templates per language (translated once, cached on disk)
# ================================================================================================================


def _without_placeholders(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\{\w+\}", "", text)).strip()


class TemplateStore:
    """Prompt templates per language: plain templates translated once per language and kept in templates/<lang>.json,
    so neither another shard nor a resumed run translates them again."""

    def __init__(self, directory: Path, tasks: Sequence[str], filter_config: FilterConfig):
        self.directory = directory
        self.tasks = list(tasks)
        self.filter_config = filter_config
        self._cache: dict[str, dict[str, LanguageTemplates]] = {}

    def path(self, language: str) -> Path:
        return self.directory / f"{language}.json"

    def phrases(self) -> list[str]:
        return list(dict.fromkeys(p for task in self.tasks for p in phrases_to_translate(TASKS[task])))

    def get(self, language: str, translator_factory) -> dict[str, LanguageTemplates]:
        if language not in self._cache:
            translations = {} if language == ENGLISH else self._translations(language, translator_factory)
            self._cache[language] = {
                task: build_language_templates(TASKS[task], get_language(language), translations) for task in self.tasks
            }
        return self._cache[language]

    def _translations(self, language: str, translator_factory) -> dict[str, str | None]:
        phrases = self.phrases()
        path = self.path(language)
        stored = read_json(path) if path.exists() else {"translations": {}, "dropped": {}}
        missing = [p for p in phrases if p not in stored["translations"]]
        if missing:
            encoded = [encode_placeholders(p) for p in missing]
            outputs = translator_factory().translate([e for e, _ in encoded], language, desc=f"templates -> {language}")
            for phrase, (_, names), output in zip(missing, encoded, outputs, strict=True):
                decoded, reason = None, None
                if output.text is not None:
                    decoded = decode_placeholders(output.text, names)
                    reason = "placeholder" if decoded is None else None
                if reason is None:
                    # The filters judge the words around the placeholders.
                    verdict = check_translation(
                        _without_placeholders(phrase),
                        None if decoded is None else _without_placeholders(decoded),
                        language,
                        self.filter_config,
                        status=output.status,
                    )
                    reason = verdict.reason
                if reason:
                    stored["dropped"][phrase] = reason
                    decoded = None
                stored["translations"][phrase] = decoded
            atomic_write_json(path, stored)
        return stored["translations"]

    def report(self) -> dict:
        out = {}
        for path in sorted(self.directory.glob("*.json")):
            stored = read_json(path)
            kept = sum(v is not None for v in stored["translations"].values())
            out[path.stem] = {"kept": kept, "dropped": dict(Counter(stored["dropped"].values()))}
        return out


# ================================================================================================================
# Planning: languages, templates and shards from the seed
# ================================================================================================================


@dataclass(frozen=True)
class Shard:
    name: str
    language: str
    indices: tuple[int, ...]  # example indices (input positions), ascending


def plan_assignments(
    examples: Sequence[Example], args: LanguageArguments
) -> tuple[dict[int, str], dict[str, dict[str, int]]]:
    """Language of every example, and the planned counts per task and language.

    Allocation is per task, so every task follows the sampling rule (and its floor) on its own.
    """
    by_task: dict[str, list[int]] = defaultdict(list)
    for example in examples:
        by_task[example.task].append(example.index)
    assignment, plan = {}, {}
    for task in sorted(by_task):
        indices = by_task[task]
        counts = plan_language_counts(
            len(indices),
            args.language_codes,
            rule=args.sampling,
            temperature=args.temperature,
            language_floor=args.language_floor,
            min_examples=args.min_examples_per_language,
            english_share=1.0 if TASKS[task].english_only else args.english_share,
            context=f"task {task!r} ({len(indices)} examples)",
        )
        plan[task] = {code: n for code, n in counts.items() if n}
        assignment.update(zip(indices, assign_languages(counts, args.seed, salt=task), strict=True))
    return assignment, plan


def template_draws(n_rows: int, seed: int) -> np.ndarray:
    """Three uniform numbers per input row: prompt template, target template, and whether a translated short answer
    is used (templates.use_translation); the third has its own stream, so the first two are as before."""
    templates = np.random.default_rng(stable_seed(seed, "templates")).random((n_rows, 2))
    labels = np.random.default_rng(stable_seed(seed, "labels")).random((n_rows, 1))
    return np.concatenate([templates, labels], axis=1)


def make_shards(assignment: dict[int, str], shard_size: int) -> list[Shard]:
    by_language: dict[str, list[int]] = defaultdict(list)
    for index, language in assignment.items():
        by_language[language].append(index)
    order = [ENGLISH] + [code for code in LANGUAGE_BY_CODE if code != ENGLISH]
    shards = []
    for language in order:
        indices = sorted(by_language.get(language, ()))
        for k, start in enumerate(range(0, len(indices), shard_size)):
            shards.append(Shard(f"{language}-{k:05d}", language, tuple(indices[start : start + shard_size])))
    return shards


# ================================================================================================================
# One shard
# ================================================================================================================


def _slots(example: Example) -> dict[str, object]:
    spec = TASKS[example.task]
    slots = {}
    for role, slot in spec.slots.items():
        value = example.fields.get(role)
        if slot == "match":
            slots[slot] = parse_match_label(value)
        else:
            text = str(value).strip()
            if slot == "rationale" and text and text[-1] not in ".!?":
                text += "."  # the target templates continue with a new sentence
            slots[slot] = text
    return slots


_FINAL_PUNCTUATION = ".!?。！？।۔"


def _match_final_punctuation(source: str, output: str) -> str:
    """NLLB ends most outputs like a sentence ("red" -> "Rot."); a short answer without a final stop keeps none."""
    if source and source[-1] not in _FINAL_PUNCTUATION:
        return output.rstrip(_FINAL_PUNCTUATION).rstrip() or output
    return output


def process_shard(
    shard: Shard,
    examples: dict[int, Example],
    draws: np.ndarray,
    templates: dict[str, LanguageTemplates],
    translator: Translator | None,
    filter_config: FilterConfig,
    language_args: LanguageArguments,
    split: bool = True,
) -> tuple[list[dict], FilterReport]:
    """Translate, filter and render the examples of one shard."""
    language = shard.language
    items = [(examples[i], _slots(examples[i])) for i in shard.indices]
    report = FilterReport()
    outputs: dict[tuple[int, str], Translation] = {}
    if language != ENGLISH:
        keys = [(ex.index, slot) for ex, slots in items for slot in TASKS[ex.task].translated]
        sources = [slots[slot] for ex, slots in items for slot in TASKS[ex.task].translated]
        outputs = dict(zip(keys, translate_fields(translator, sources, language, split, desc=shard.name), strict=True))
    rows = []
    for example, slots in items:
        spec = TASKS[example.task]
        reason, langids = None, []
        u_prompt, u_target, u_label = draws[example.index]
        answer_in_english = spec.optional_translation is not None
        if language != ENGLISH:
            # The optional short answer (VQA, question generation) never drops its example: when its translation
            # fails the filters or is not drawn, the English answer stays.
            required = [slot for slot in spec.translated if slot != spec.optional_translation]
            translated = [outputs[(example.index, slot)] for slot in required]
            reason, langids = check_fields(
                [slots[slot] for slot in required],
                [t.text for t in translated],
                [t.status for t in translated],
                [slot in spec.short for slot in required],
                language,
                filter_config,
            )
            if reason is None:
                slots = {
                    **slots,
                    **{
                        slot: _match_final_punctuation(slots[slot], t.text) if slot in spec.short else t.text
                        for slot, t in zip(required, translated, strict=True)
                    },
                }
            optional = spec.optional_translation
            if reason is None and optional is not None:
                output = outputs[(example.index, optional)]
                failed, _ = check_fields(
                    [slots[optional]], [output.text], [output.status], [True], language, filter_config
                )
                text = None if failed else _match_final_punctuation(slots[optional], output.text)
                if use_translation(slots[optional], text, u_label, language_args.translated_label_share):
                    slots = {**slots, optional: text}
                    answer_in_english = False
        if reason is None:
            task_templates = templates[example.task]
            if not (task_templates.named or task_templates.translated) or (spec.targets and not task_templates.targets):
                reason = "no_template"
        report.add(language, example.task, reason, langids)
        if reason is not None:
            continue
        context, label = render_example(
            spec,
            task_templates,
            slots,
            u_prompt,
            u_target,
            language_args.translated_prompt_share,
            answer_in_english=answer_in_english and spec.named_language == "answer",
        )
        row = {
            "_index": example.index,
            "image_id": example.image_id,
            "context": context,
            "label": label,
            "lang": language,
            "task": example.task,
        }
        row.update({k: v for k, v in example.extra.items() if k not in row})
        rows.append(row)
    return rows, report


# ================================================================================================================
# The run
# ================================================================================================================


def _partial_state():
    """accelerate's process state. Launched as several processes without CUDA, the processes are CPU workers that
    talk over gloo; accelerate only picks that when asked for the CPU explicitly."""
    from accelerate import PartialState

    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=multi_process and not torch.cuda.is_available())


def _settings(data_args, language_args, translation_args, filter_args) -> dict:
    settings = {}
    for args in (data_args, language_args, translation_args, filter_args):
        settings.update({k: v for k, v in asdict(args).items() if k not in RESUME_INSENSITIVE})
    # Paths may move between a run and its resumption; the input's content fingerprint is checked instead.
    settings.pop("output", None)
    settings.pop("input", None)
    return settings


def _check_or_write_run_config(out: Path, config: dict) -> None:
    """A fresh run records its settings, inputs and model; a resumed one must match them (mblip.outputs)."""
    # Recorded before the engine was a setting: those runs used transformers.
    legacy = {"settings.engine": "transformers", "settings.compute_type": None}
    check_settings(out / "run_config.json", config, what=f"The run in {out}", defaults=legacy)


def _reset_output(out: Path, output_name: str) -> None:
    for sub in ("shards", "templates"):
        for path in (out / sub).glob("*") if (out / sub).exists() else ():
            path.unlink()
    for name in ("run_config.json", "report.json", *(f"{output_name}.{fmt}" for fmt in OUTPUT_FORMATS)):
        (out / name).unlink(missing_ok=True)


def _shard_done(out: Path, shard: Shard) -> bool:
    if not (out / "shards" / f"{shard.name}.jsonl").exists():
        return False
    # Same examples as planned now; the run config guards the rest.
    expected = {"n_examples": len(shard.indices), "first": shard.indices[0], "last": shard.indices[-1]}
    return read_done(out / "shards" / f"{shard.name}.done.json", expected) is not None


def _prepare_output(out: Path, run_config: dict, data_args: DataArguments) -> None:
    """Main process, before any work: directories, a fresh start if asked, the resumption check, stale temporaries."""
    (out / "shards").mkdir(parents=True, exist_ok=True)
    (out / "templates").mkdir(parents=True, exist_ok=True)
    if data_args.overwrite:
        _reset_output(out, data_args.output_name)
    _check_or_write_run_config(out, run_config)
    for sub in ("shards", "templates", "."):
        removed = remove_stale_temporaries(out / sub)
        if removed:
            logger.info("Removed %d temporary files left by an interrupted run in %s.", removed, out / sub)


class _LazyTranslator:
    """Loads the model on first use only: English-only work, and a resumed run with nothing left, never load it."""

    def __init__(self, translator: Translator | None, args: TranslationArguments, device, show_progress: bool):
        self.translator, self.args, self.device, self.show_progress = translator, args, device, show_progress

    def __call__(self) -> Translator:
        if self.translator is None:
            a = self.args
            engine = {}
            if a.engine == "ctranslate2":
                engine = {"compute_type": a.compute_type, "cache_dir": a.ctranslate2_cache_dir}
            self.translator = (CTranslate2Translator if engine else Translator).from_pretrained(
                a.model,
                **engine,
                device=self.device,
                bf16=a.bf16,
                src_lang=a.src_lang,
                lang_token_format=a.lang_token_format,
                batch_size=a.batch_size,
                num_beams=a.num_beams,
                max_len_a=a.max_len_a,
                max_len_b=a.max_len_b,
                max_new_tokens=a.max_new_tokens,
                max_source_length=a.max_source_length,
                show_progress=self.show_progress,
            )
        return self.translator


def _write_shard(out: Path, shard: Shard, rows: list[dict], report: FilterReport, seconds: float) -> None:
    """Data first, then the marker: a shard counts as done only once both are in place."""
    write_jsonl(out / "shards" / f"{shard.name}.jsonl", rows)
    marker = {
        "shard": shard.name,
        "language": shard.language,
        "n_examples": len(shard.indices),
        "first": shard.indices[0],
        "last": shard.indices[-1],
        "kept": len(rows),
        "seconds": round(seconds, 3),
        "report": report.to_dict(),
    }
    mark_done(out / "shards" / f"{shard.name}.done.json", marker)


def _write_final(out: Path, shards: Sequence[Shard], data_args: DataArguments) -> tuple[Path, int]:
    paths = [out / "shards" / f"{shard.name}.jsonl" for shard in shards]

    def rows():
        # Shard by shard (English first, then the table's order; input order within a language): streams with one
        # open file, whatever the number of shards. The trainer shuffles anyway.
        for path in paths:
            for row in read_jsonl(path):
                row.pop("_index")
                yield row

    final = out / f"{data_args.output_name}.{data_args.output_format}"
    if data_args.output_format == "jsonl":
        return final, write_final_jsonl(final, rows())
    return final, write_final_parquet(final, rows)


def _sampling_report(language_args: LanguageArguments, plan: dict) -> dict:
    english_share = language_args.english_share
    return {
        "rule": language_args.sampling,
        "temperature": language_args.temperature if language_args.sampling == "temperature" else None,
        "language_floor": language_args.language_floor,
        "min_examples_per_language": language_args.min_examples_per_language,
        "english_share": LANGUAGE_BY_CODE[ENGLISH].mc4_share / 100 if english_share is None else english_share,
        "seed": language_args.seed,
        "planned": plan,
    }


def build_task_mix(
    data_args: DataArguments,
    language_args: LanguageArguments,
    translation_args: TranslationArguments,
    filter_config: FilterConfig,
    *,
    translator: Translator | None = None,
    source=None,
) -> dict | None:
    """Run the whole pipeline; returns the report on the main process (None on the others).

    ``translator`` replaces the one loaded from ``--model``; ``source`` (a ``datasets.Dataset`` or a list of dicts)
    replaces ``--input``.
    """
    from tqdm.auto import tqdm

    state = _partial_state()
    out = Path(data_args.output)
    source = data_args.input if source is None else source
    translation_args.resolve_compute_type(state.device)
    started = time.time()

    # ---- input -------------------------------------------------------------------------------------------------
    columns = data_args.columns()
    default_task = resolve_task(data_args.task) if data_args.task else None
    examples, malformed, n_rows = load_examples(
        source, columns, default_task, data_args.input_split, data_args.max_rows
    )
    check_malformed(malformed, n_rows, data_args.max_bad_rows, columns)
    if malformed.count:
        logger.warning(
            "%d of %d rows are malformed and skipped: %s", malformed.count, n_rows, dict(malformed.by_reason)
        )
    by_index = {example.index: example for example in examples}
    tasks = sorted({example.task for example in examples})

    # ---- plan (deterministic from the seed) --------------------------------------------------------------------
    assignment, plan = plan_assignments(examples, language_args)
    draws = template_draws(n_rows, language_args.seed)
    shards = make_shards(assignment, translation_args.shard_size)

    # ---- output directory and resumption -----------------------------------------------------------------------
    if state.is_main_process:
        run_config = {
            "format_version": FORMAT_VERSION,
            "input_fingerprint": input_fingerprint(source, data_args.input_split),
            "model_identity": model_identity(translation_args.model),
            "n_rows": n_rows,
            "settings": _settings(data_args, language_args, translation_args, filter_config),
        }
        _prepare_output(out, run_config, data_args)
    state.wait_for_everyone()
    n_done = sum(_shard_done(out, shard) for shard in shards)
    logger.info(
        "%d examples (%d tasks) -> %d shards, %d already done, %d to do on %d process(es).",
        len(examples),
        len(tasks),
        len(shards),
        n_done,
        len(shards) - n_done,
        state.num_processes,
    )

    # ---- translate ---------------------------------------------------------------------------------------------
    store = TemplateStore(out / "templates", tasks, filter_config)
    show_progress = translation_args.progress and state.is_local_main_process
    get_translator = _LazyTranslator(translator, translation_args, state.device, show_progress)
    # Processes split the full, fixed shard list, not the pending one: which shards are pending depends on when a
    # process looks, and two processes looking at different moments would split differently and miss or repeat
    # shards. Ordering by shard number first mixes languages (and English, which needs no model) into every part.
    work = sorted(shards, key=lambda shard: int(shard.name.rsplit("-", 1)[1]))
    with state.split_between_processes(work) as mine:
        mine = [shard for shard in mine if not _shard_done(out, shard)]
        targets = sorted({shard.language for shard in mine if shard.language != ENGLISH})
        if targets:
            get_translator().check_languages(targets)
        bar = tqdm(mine, desc="shards", unit="shard", disable=not show_progress)
        for shard in bar:
            bar.set_postfix_str(shard.name)
            shard_started = time.time()
            rows, report = process_shard(
                shard,
                by_index,
                draws,
                store.get(shard.language, get_translator),
                get_translator() if shard.language != ENGLISH else None,
                filter_config,
                language_args,
                split=translation_args.split_sentences,
            )
            _write_shard(out, shard, rows, report, time.time() - shard_started)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None

    # ---- merge and report --------------------------------------------------------------------------------------
    missing = [shard.name for shard in shards if not _shard_done(out, shard)]
    if missing:
        raise RuntimeError(f"{len(missing)} shards are not done after all processes finished: {missing[:10]}")
    final, n_written = _write_final(out, shards, data_args)
    filters = FilterReport()
    for shard in shards:
        filters.merge(FilterReport.from_dict(read_json(out / "shards" / f"{shard.name}.done.json")["report"]))
    report = {
        "output": str(final),
        "rows": n_written,
        "input": {
            "source": str(source) if isinstance(source, (str, Path)) else type(source).__name__,
            "rows": n_rows,
            "valid": len(examples),
            "malformed": malformed.to_dict(),
        },
        "sampling": _sampling_report(language_args, plan),
        "totals": filters.totals(),
        **filters.to_dict(),
        "templates": store.report(),
        "model": translation_args.model,
        "engine": translation_args.engine,
        "compute_type": translation_args.compute_type,
        "shards": len(shards),
        "seconds_this_run": round(time.time() - started, 1),
    }
    atomic_write_json(out / "report.json", report)
    _log_summary(report)
    return report


def _log_summary(report: dict) -> None:
    totals = report["totals"]
    logger.info(
        "Wrote %d rows to %s (report: %s).",
        report["rows"],
        report["output"],
        Path(report["output"]).with_name("report.json"),
    )
    logger.info(
        "Kept %d of %d examples; dropped by reason: %s",
        totals["kept"],
        totals["assigned"],
        totals["dropped"] or "none",
    )
    logger.info("Language id of kept translated fields: %s", totals["langid"] or "none")
    malformed = report["input"]["malformed"]
    if malformed["count"]:
        logger.info("Malformed input rows: %d %s", malformed["count"], malformed["by_reason"])
    weak = [
        f"{lang} ({entry['kept']}/{entry['assigned']})"
        for lang, entry in report["languages"].items()
        if entry["assigned"] and entry["kept"] < 0.5 * entry["assigned"]
    ]
    if weak:
        logger.warning("Languages that lost more than half of their examples to the filters: %s", ", ".join(weak))


# ================================================================================================================
# Command line
# ================================================================================================================


def parse_args(argv: Sequence[str] | None = None):
    """Flags, or one .json/.yaml file followed by flags that override it (mblip/arguments.py)."""
    from mblip.arguments import parse_args as parse_arguments

    return parse_arguments(
        (DataArguments, LanguageArguments, TranslationArguments, FilterConfig),
        argv,
        prog="python -m mblip.data.translate",
        description="Translate English vision-and-language examples into mBLIP's multilingual task mix.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    from mblip.arguments import run_command

    # One progress log, from the main process; the others only warn. An unknown language or too many malformed rows
    # is a ValueError, the user's to fix, like a bad option.
    level = logging.INFO if _partial_state().is_local_main_process else logging.WARNING
    return run_command(lambda: build_task_mix(*parse_args(argv)), logger, level=level)


if __name__ == "__main__":
    sys.exit(main())
