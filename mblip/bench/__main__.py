"""Every performance comparison in one run; writes the machine-readable results and BENCHMARKS.md.

    python -m mblip.bench                                   # CPU sizes, ~12 minutes on 2 cores
    python -m mblip.bench --only inference training         # a subset
    python -m mblip.bench --only data_scale                 # the paper-scale data rehearsal (bench/data_scale.py)
    python -m mblip.bench --render_only                     # rebuild BENCHMARKS.md from benchmarks/*.json

    # GPU, real shapes with random weights (BLIP-2 ViT-g + Q-Former + mT0-XL / BLOOMZ-7B1):
    python -m mblip.bench --device cuda --full_size
    python -m mblip.bench --device cuda --full_size --only inference --static_cache --compile

Each device writes benchmarks/<device>.json (a CPU run never overwrites GPU results, nor the reverse), and
BENCHMARKS.md is rendered from all the result files present.
"""

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mblip.arguments import MBlipArgumentParser
from mblip.outputs import atomic_open

from . import common


logger = logging.getLogger("bench")

PARTS = ("inference", "training", "translation", "data_scale")
TRANSLATION_COMPARISONS = ("ordering", "engines")


@dataclass
class BenchArguments:
    device: str = field(default="cpu", metadata={"help": "cpu or cuda (cuda[:N])."})
    full_size: bool = field(
        default=False,
        metadata={"help": "Random weights at the real shapes (ViT-g, Q-Former, mT0-XL / BLOOMZ-7B1); needs a GPU."},
    )
    size: str | None = field(
        default=None, metadata={"help": "Model sizes: cpu (default), full (= --full_size), tiny (tests, seconds)."}
    )
    only: list[str] = field(default_factory=lambda: list(PARTS), metadata={"help": f"Parts to run, of {PARTS}."})
    families: list[str] = field(default_factory=lambda: ["mt5", "bloom"], metadata={"help": "LLM families."})
    repeats: int = field(
        default=20,
        metadata={"help": "Alternating rounds per inference comparison (10 left batch-16 verdicts to chance)."},
    )
    batch_sizes: list[int] | None = field(
        default=None, metadata={"help": "Inference batch sizes (default: 1 16 on CPU sizes, 1 16 64 full size)."}
    )
    max_new_tokens: int | None = field(default=None, metadata={"help": "Tokens per caption (default 10, full 30)."})
    llm_dtypes: list[str] | None = field(
        default=None,
        metadata={
            "help": "Inference LLM precisions of float32 bfloat16 int8 int4 (default: float32 on CPU; "
            "bfloat16 int8 int4 on CUDA)."
        },
    )
    static_cache: bool = field(default=False, metadata={"help": "Also time mBLIP with a static KV cache."})
    compile: bool = field(default=False, metadata={"help": "torch.compile the vision stack (both sides share it)."})
    memory_repeats: int = field(default=2, metadata={"help": "Fresh processes per side for CPU inference memory."})
    train_repeats: int = field(default=5, metadata={"help": "Fresh training runs per side."})
    train_steps: int | None = field(default=None, metadata={"help": "Steps per training run (default 8, full 10)."})
    train_warmup_steps: int | None = field(default=None, metadata={"help": "Steps left out of samples/s (2, full 3)."})
    train_batch_size: int | None = field(default=None, metadata={"help": "Training batch (default 4, full 8)."})
    train_families: list[str] | None = field(default=None, metadata={"help": "Default: --families."})
    train_settings: list[str] | None = field(
        default=None,
        metadata={"help": "Training settings to run, by name (CPU: fp32 int8+gc; GPU: int8+gc int4+gc). Default: all."},
    )
    translation_repeats: int = field(default=7, metadata={"help": "Alternating rounds per translation profile."})
    translation_comparisons: list[str] = field(
        default_factory=lambda: list(TRANSLATION_COMPARISONS),
        metadata={
            "help": "ordering: length-sorted batches vs the naive loop; engines: CTranslate2 vs the transformers "
            "engine (needs ctranslate2)."
        },
    )
    translation_model: str | None = field(
        default=None,
        metadata={
            "help": "Engines: a real checkpoint (folder or Hub id, e.g. facebook/nllb-200-distilled-1.3B on a GPU) "
            "instead of the random CPU-size model."
        },
    )
    translation_engine_d_models: list[int] = field(
        default_factory=lambda: [256, 64],
        metadata={
            "help": "Engines: widths of the random model (2+2 layers). 256 is the CPU size of every translation "
            "comparison; smaller ones show how the gap depends on the share of per-step overhead."
        },
    )
    translation_compute_types: list[str] | None = field(
        default=None,
        metadata={
            "help": "Engines: CTranslate2 compute types, the first checked for identical outputs (default: float32 "
            "int8 on CPU; bfloat16 int8_float16 on CUDA)."
        },
    )
    threads: int = field(
        default=1,
        metadata={
            "help": "torch threads on CPU. 1 by default: on a shared 2-core machine two OpenMP threads stall "
            "whenever another process takes a core, which swamps the differences we measure."
        },
    )
    peak_tflops: float | None = field(default=None, metadata={"help": "Peak bf16 TFLOP/s for MFU if not detected."})
    results_dir: str = field(default="benchmarks", metadata={"help": "Where <device>.json goes."})
    output: str = field(default="BENCHMARKS.md", metadata={"help": "The rendered report."})
    render_only: bool = field(default=False, metadata={"help": "Only re-render the report from results_dir."})
    log_file: str = field(
        default="outputs/bench/children.log", metadata={"help": "Where the measured processes' own output goes."}
    )

    def __post_init__(self):
        unknown = sorted(set(self.only) - set(PARTS))
        if unknown:
            raise ValueError(f"--only takes {PARTS}, got {unknown}")
        unknown = sorted(set(self.translation_comparisons) - set(TRANSLATION_COMPARISONS))
        if unknown:
            raise ValueError(f"--translation_comparisons takes {TRANSLATION_COMPARISONS}, got {unknown}")
        bad = sorted(set(self.families + (self.train_families or [])) - set(common.FAMILIES))
        if bad:
            raise ValueError(f"--families takes {common.FAMILIES}, got {bad}")
        cuda = torch.device(self.device).type == "cuda"
        if self.size not in (None, *common.SIZES):
            raise ValueError(f"--size takes {common.SIZES}, got {self.size!r}")
        if self.size == "full" and not self.full_size:
            self.full_size = True
        if self.full_size and self.size not in (None, "full"):
            raise ValueError(f"--full_size contradicts --size {self.size}")
        full = self.full_size
        self.size = "full" if full else (self.size or "cpu")
        self.batch_sizes = self.batch_sizes or ([1, 16, 64] if full else [1, 16])
        self.max_new_tokens = self.max_new_tokens or (30 if full else 10)
        self.llm_dtypes = self.llm_dtypes or (["bfloat16", "int8", "int4"] if cuda else ["float32"])
        self.translation_compute_types = self.translation_compute_types or (
            ["bfloat16", "int8_float16"] if cuda else ["float32", "int8"]
        )
        self.train_steps = self.train_steps or (10 if full else 8)
        self.train_warmup_steps = self.train_warmup_steps if self.train_warmup_steps is not None else (3 if full else 2)
        self.train_batch_size = self.train_batch_size or (8 if full else 4)
        self.train_families = self.train_families or list(self.families)
        if self.full_size and not cuda:
            raise ValueError("--full_size builds multi-billion-parameter models: it needs --device cuda")
        if self.train_steps <= self.train_warmup_steps:
            raise ValueError(
                f"--train_steps {self.train_steps} must exceed --train_warmup_steps {self.train_warmup_steps}"
            )


def results_path(args) -> Path:
    device = torch.device(args.device).type
    return Path(args.results_dir) / f"{device}{'' if args.size == 'cpu' else '-' + args.size}.json"


def save(results: dict, path: Path):
    # Written after every part, so that a long GPU run that dies keeps what it measured.
    with atomic_open(path) as handle:
        json.dump(results, handle, indent=1, default=str)


def _stamp(entry: dict, run_info: dict) -> dict:
    """Each measured row carries the run (command, time, machine) that measured it."""
    return {**entry, "run": run_info}


def merge_inference(old: list, new: list) -> list:
    """New inference rows replace only the same (LLM dtype, family) rows; the others stay as they were measured."""
    merged = [dict(part, families=dict(part["families"])) for part in old]
    for part in new:
        same = [m for m in merged if m["setup"].get("llm_dtype") == part["setup"].get("llm_dtype")]
        if same and same[0]["setup"] == part["setup"]:
            same[0]["families"].update(part["families"])
        elif same:
            # Other settings (batch sizes, repeats, ...): the part's rows no longer compare with the old ones.
            kept = sorted(set(same[0]["families"]) - set(part["families"]))
            if kept:
                logger.warning(
                    "Inference %s: settings changed, so the earlier rows of %s are dropped (rerun them with the same "
                    "settings): %s -> %s",
                    part["setup"].get("llm_dtype"),
                    kept,
                    same[0]["setup"],
                    part["setup"],
                )
            merged[merged.index(same[0])] = part
        else:
            merged.append(part)
    return merged


def merge_training(old: dict | None, new: dict) -> dict:
    """New training rows replace only the same (family, setting) rows, when the run settings are the same."""
    if not old or old.get("setup") != new["setup"]:
        if old:
            logger.warning(
                "Training: settings changed, so the earlier rows (%s) are dropped: %s -> %s",
                sorted(old.get("families", {})),
                old.get("setup"),
                new["setup"],
            )
        return new
    families = {name: dict(entry, configs=dict(entry["configs"])) for name, entry in old["families"].items()}
    for name, entry in new["families"].items():
        if name in families:
            families[name].update({k: v for k, v in entry.items() if k != "configs"})
            families[name]["configs"].update(entry["configs"])
        else:
            families[name] = entry
    return {**new, "families": families}


def run_translation(args, run_info: dict) -> dict:
    """bench/translation.py's run() (ordering) and run_engines() (engines) for each of its length profiles, each in a
    child (it sets its own thread count)."""
    import importlib.util

    from . import translation

    measured = {}
    if "ordering" in args.translation_comparisons:
        results = [
            common.in_child(translation.run, repeats=args.translation_repeats, profile=p) for p in translation.PROFILES
        ]
        measured.update(results=results, markdown=translation.markdown(results), ordering_run=run_info)
    if "engines" in args.translation_comparisons:
        if importlib.util.find_spec("ctranslate2") is None:
            logger.warning("Translation engines: ctranslate2 is not installed (pip install ctranslate2); not measured.")
            return measured
        cuda = torch.device(args.device).type == "cuda"
        results = [
            common.in_child(
                translation.run_engines,
                repeats=args.translation_repeats,
                profile=p,
                threads=args.threads,
                batch_size=64 if cuda else 32,
                compute_types=tuple(args.translation_compute_types),
                model=args.translation_model,
                device=args.device,
                d_model=d_model,
            )
            for d_model in ([None] if args.translation_model else args.translation_engine_d_models)
            for p in translation.PROFILES
        ]
        measured.update(engines=results, engines_markdown=translation.markdown_engines(results), engines_run=run_info)
    return measured


def merge_translation(old: dict | None, new: dict) -> dict:
    """A run of one translation comparison (ordering, engines) replaces that comparison and keeps the other."""
    return {**(old or {}), **new}


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = MBlipArgumentParser(BenchArguments, prog="python -m mblip.bench", description=__doc__)
    try:
        (args,) = parser.parse_command_line(argv)  # flags, or one .json/.yaml file followed by overriding flags
    except ValueError as err:
        parser.error(str(err))
    from .report import render

    if args.render_only:
        Path(args.output).write_text(render(args.results_dir), encoding="utf-8")
        logger.info("Wrote %s from %s", args.output, args.results_dir)
        return 0
    common.require_device(args.device)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded: every model is built on the spot
    if torch.device(args.device).type == "cpu":
        torch.set_num_threads(args.threads)
    log = Path(args.log_file)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    common.set_child_log(log)

    path = results_path(args)
    # A run of some parts, families or settings replaces only the rows it measured; every row keeps the run (command,
    # time, machine) that measured it, and the report names each machine.
    previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    results = dict(previous)
    results.update(machine=common.machine(args.device), seconds={}, runs=previous.get("runs", {}))
    run_info = {
        "command": " ".join(["python -m mblip.bench", *(sys.argv[1:] if argv is None else argv)]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": results["machine"],
    }
    for part in args.only:
        results["runs"][part] = run_info
    start = time.perf_counter()
    if "inference" in args.only:
        from . import inference

        measured = []
        for llm_dtype in args.llm_dtypes:
            logger.info("Inference, %s LLM: %s at batch %s", llm_dtype, args.families, args.batch_sizes)
            t0 = time.perf_counter()
            part = inference.run(
                args.families,
                args.size,
                tuple(args.batch_sizes),
                args.repeats,
                args.max_new_tokens,
                args.device,
                llm_dtype,
                memory_repeats=args.memory_repeats,
                static_cache=args.static_cache,
                compile=args.compile,
            )
            part["families"] = {name: _stamp(entry, run_info) for name, entry in part["families"].items()}
            measured.append(part)
            results["inference"] = merge_inference(previous.get("inference", []), measured)
            results["seconds"][f"inference-{llm_dtype}"] = time.perf_counter() - t0
            save(results, path)
    if "training" in args.only:
        from . import training

        logger.info("Training: %s, batch %d, %d steps", args.train_families, args.train_batch_size, args.train_steps)
        t0 = time.perf_counter()
        configs = training.default_configs(args.device)
        if args.train_settings:
            unknown = sorted(set(args.train_settings) - {c["name"] for c in configs})
            if unknown:
                parser.error(f"--train_settings takes {[c['name'] for c in configs]}, got {unknown}")
            configs = [c for c in configs if c["name"] in args.train_settings]
        measured = training.run(
            args.train_families,
            args.size,
            configs=configs,
            repeats=args.train_repeats,
            steps=args.train_steps,
            warmup_steps=args.train_warmup_steps,
            batch_size=args.train_batch_size,
            device=args.device,
            peak_tflops=args.peak_tflops,
        )
        for entry in measured["families"].values():
            entry["configs"] = {name: _stamp(config, run_info) for name, config in entry["configs"].items()}
        results["training"] = merge_training(previous.get("training"), measured)
        results["seconds"]["training"] = time.perf_counter() - t0
        save(results, path)
    if "translation" in args.only:
        logger.info("Translation (bench/translation.py)")
        t0 = time.perf_counter()
        results["translation"] = merge_translation(previous.get("translation"), run_translation(args, run_info))
        results["seconds"]["translation"] = time.perf_counter() - t0
    if "data_scale" in args.only:
        from . import data_scale

        logger.info("Data at the paper's scale (bench/data_scale.py)")
        t0 = time.perf_counter()
        measured = data_scale.run("tiny" if args.size == "tiny" else "cpu")
        results["data_scale"] = _stamp(measured, run_info)
        results["seconds"]["data_scale"] = time.perf_counter() - t0
    results["seconds"]["total"] = time.perf_counter() - start
    save(results, path)
    Path(args.output).write_text(render(args.results_dir), encoding="utf-8")
    logger.info("Wrote %s and %s in %.0f s", path, args.output, results["seconds"]["total"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
