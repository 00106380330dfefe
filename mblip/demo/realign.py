"""The offline demo: mBLIP in miniature, end to end, on data the repository generates.

    python train_mblip.py                     # no arguments: this demo, into outputs/demo
    python -m mblip.demo.realign --english_pivot    # also the English-only re-alignment (zero-shot transfer)
    python -m mblip.demo.realign --quick            # a two-minute smoke run with tiny budgets

1. world    rendered scenes of coloured shapes; captions and questions in 8 languages, 5 scripts (demo/world.py)
2. parts    an "English BLIP-2" (ViT + Q-Former + English LM, trained on English only) and, at the same time on the
            second core, a multilingual LM trained on text only (demo/pretrain.py)
3. mBLIP    train_mblip.py re-aligns the English vision stack to the multilingual LM: LLM in 8 bit with LoRA,
            Q-Former and a new projection trained, on the multilingual task mix -> <output_dir>/mblip
            (with --english_pivot, also on English only -> <output_dir>/mblip-english-pivot)
4. eval     eval/ on held-out scenes written in XM3600's and xGQA's formats: CIDEr and language fidelity of
            captions, accuracy of English answers to questions asked in each language
5. report   per-language scores and sample outputs; loss.png and scores.png

Every step skips work whose output exists, so an interrupted demo continues where it stopped. The demo runs one
thread per process and runs independent steps side by side, which on a busy 2-core machine is faster than letting
two threads per process fight for the cores.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mblip.cards import PROJECT_LICENSE
from mblip.outputs import atomic_write_json

from .pretrain import Schedule
from .world import LANGUAGES


logger = logging.getLogger("demo")

STAGES = ("world", "english_blip2", "multilingual_lm", "realign", "realign_pivot", "eval", "report")


# ================================================================================================ settings
@dataclass(frozen=True)
class Realignment:
    """train_mblip.py's budget. The paper's learning rates (5e-5 projection, 1e-5 Q-Former, 2e-4 LoRA) are for
    billion-parameter models and a million steps; these tiny models and a few hundred steps need larger ones."""

    steps: int
    batch_size: int
    learning_rate: float  # the new projection
    qformer_learning_rate: float
    lora_learning_rate: float
    lora_r: int = 16


@dataclass(frozen=True)
class Budget:
    n_train: int
    n_test: int
    representation: Schedule  # English BLIP-2, stage 1: ViT, queries, Q-Former
    english: Schedule  # English BLIP-2, stage 2: Q-Former, projection, English LM
    text: Schedule  # the multilingual LM, text only
    realign: Realignment
    questions_per_test_scene: int = 2
    eval_batch_size: int = 50
    num_beams: int | None = None  # None: the paper's (5)


FULL = Budget(
    n_train=3000,
    n_test=100,
    representation=Schedule(steps=1500, batch_size=32, learning_rate=1e-3, log_every=20),
    english=Schedule(steps=1000, batch_size=32, learning_rate=1e-3, log_every=20),
    text=Schedule(steps=800, batch_size=32, learning_rate=2e-3, log_every=20),
    realign=Realignment(
        steps=1500, batch_size=32, learning_rate=2e-3, qformer_learning_rate=1e-3, lora_learning_rate=2e-3
    ),
)
QUICK = Budget(
    n_train=200,
    n_test=6,
    representation=Schedule(steps=40, batch_size=16, learning_rate=1e-3, log_every=5),
    english=Schedule(steps=40, batch_size=16, learning_rate=1e-3, log_every=5),
    text=Schedule(steps=40, batch_size=16, learning_rate=2e-3, log_every=5),
    realign=Realignment(
        steps=20, batch_size=16, learning_rate=2e-3, qformer_learning_rate=1e-3, lora_learning_rate=2e-3
    ),
    questions_per_test_scene=1,
    eval_batch_size=8,
    num_beams=1,
)


@dataclass
class DemoArguments:
    output_dir: str = field(
        default="outputs/demo",
        metadata={
            "help": "Where everything goes; <output_dir>/mblip is "
            "the re-aligned model repository (the default model of predict.py and app.py)."
        },
    )
    quick: bool = field(
        default=False,
        metadata={
            "help": "Tiny budgets: a smoke run of every step in about two minutes. Its models learn next to nothing."
        },
    )
    english_pivot: bool = field(
        default=False,
        metadata={
            "help": "Also re-align on English data only and evaluate in "
            "every language: zero-shot cross-lingual transfer (the MpM pivot idea)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the world and of every training run."})


@dataclass
class Paths:
    root: Path

    def __post_init__(self):
        self.root = Path(self.root)

    @property
    def world(self) -> Path:
        return self.root / "world"

    @property
    def images(self) -> Path:
        return self.world / "images"

    @property
    def xm3600(self) -> Path:
        return self.world / "test" / "xm3600"

    @property
    def xgqa(self) -> Path:
        return self.world / "test" / "xgqa"

    @property
    def blip2(self) -> Path:
        return self.root / "blip2-english"

    @property
    def llm(self) -> Path:
        return self.root / "multilingual-lm"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def model(self, pivot: bool = False) -> Path:
        return self.root / ("mblip-english-pivot" if pivot else "mblip")

    def eval(self, pivot: bool = False) -> Path:
        return self.root / "eval" / ("mblip-english-pivot" if pivot else "mblip")


# ================================================================================================ helpers
def done(folder: Path) -> bool:
    """A model folder is complete once its config.json exists: every writer here puts it in place last."""
    return (folder / "config.json").is_file()


def worker_setup():
    """Each process computes on one thread (see the module docstring) and logs like the parent."""
    import torch

    torch.set_num_threads(1)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("demo").setLevel(logging.INFO)


def run_side_by_side(jobs: list[tuple]) -> list:
    """Runs (function, *args) jobs in separate processes at the same time; a single job runs in this process."""
    if len(jobs) == 1:
        function, *args = jobs[0]
        return [function(*args)]
    import multiprocessing

    # spawn, not fork: a forked child would inherit the parent's torch thread pool in an undefined state.
    with ProcessPoolExecutor(
        len(jobs), mp_context=multiprocessing.get_context("spawn"), initializer=worker_setup
    ) as pool:
        futures = [pool.submit(function, *args) for function, *args in jobs]
        return [future.result() for future in futures]


def check_settings(paths: Paths, settings: dict) -> None:
    """Refuse to mix outputs of different seeds or budgets in one folder: resuming is only safe with the same ones."""
    path = paths.root / "demo_settings.json"
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise ValueError(
                f"{paths.root} holds a demo run with other settings (differing: {', '.join(changed)}); "
                "use another --output_dir or delete that folder"
            )
    else:
        atomic_write_json(path, settings)


# ================================================================================================ 1. world
def build_world(paths: Paths, budget: Budget, seed: int) -> dict:
    """Images (kept if present: pixels are a function of the scene), training files and the held-out benchmark
    files (rewritten: cheap and deterministic). Returns the rows of each training stage."""
    from mblip.outputs import write_jsonl

    from .mix import image_rows, text_rows
    from .world import make_scenes, save_images, write_xgqa, write_xm3600

    train, test = make_scenes(seed, budget.n_train, budget.n_test)
    save_images(train + test, paths.images)
    rows = {
        "english": image_rows(train, seed, "english", languages=("en",)),
        "text": text_rows(train, seed),
        "mix": image_rows(train, seed, "mix"),
        "mix_english": image_rows(train, seed, "mix", languages=("en",)),
    }
    for name, stage_rows in rows.items():
        write_jsonl(paths.world / f"{name}.jsonl", stage_rows)
    rows["scenes"] = train
    write_xm3600(test, paths.xm3600 / "captions.jsonl")
    write_xgqa(test, paths.xgqa, seed, per_scene=budget.questions_per_test_scene)
    logger.info(
        "world: %d train and %d test scenes in %s; %s",
        len(train),
        len(test),
        paths.world,
        ", ".join(f"{name} {len(r)} rows" for name, r in rows.items() if name != "scenes"),
    )
    return rows


# ================================================================================================ 2. parts
def english_blip2_job(scenes, rows: list[dict], paths: Paths, budget: Budget, seed: int) -> float:
    from .pretrain import save_history, train_english_blip2

    start = time.perf_counter()
    history = train_english_blip2(scenes, rows, paths.images, paths.blip2, budget.representation, budget.english, seed)
    seconds = time.perf_counter() - start
    save_history(history, paths.logs / "english_blip2.json", seconds)
    return seconds


def multilingual_lm_job(rows: list[dict], paths: Paths, schedule: Schedule, seed: int) -> float:
    from .pretrain import save_history, train_multilingual_lm

    start = time.perf_counter()
    history = train_multilingual_lm(rows, paths.llm, schedule, seed)
    seconds = time.perf_counter() - start
    save_history(history, paths.logs / "multilingual_lm.json", seconds)
    return seconds


def build_parts(paths: Paths, rows: dict, budget: Budget, seed: int, timings: dict) -> None:
    paths.logs.mkdir(parents=True, exist_ok=True)
    jobs, names = [], []
    if not done(paths.blip2):
        jobs.append((english_blip2_job, rows["scenes"], rows["english"], paths, budget, seed))
        names.append("english_blip2")
    else:
        logger.info("English BLIP-2: %s exists, skipped", paths.blip2)
    if not done(paths.llm):
        jobs.append((multilingual_lm_job, rows["text"], paths, budget.text, seed))
        names.append("multilingual_lm")
    else:
        logger.info("multilingual LM: %s exists, skipped", paths.llm)
    if jobs:
        logger.info("training %s%s", " and ".join(names), " side by side" if len(jobs) > 1 else "")
        timings.update(zip(names, run_side_by_side(jobs)))


# ================================================================================================ 3. re-alignment
def realign_arguments(paths: Paths, budget: Budget, seed: int, pivot: bool) -> list[str]:
    """train_mblip.py's command line: the paper's recipe (8-bit LLM, LoRA on every linear layer, Q-Former and a new
    projection trained, the ViT frozen) on the demo's task mix."""
    r = budget.realign
    train_file = paths.world / ("mix_english.jsonl" if pivot else "mix.jsonl")
    return [
        "--vision_model_name_or_path",
        str(paths.blip2),
        "--language_model_name_or_path",
        str(paths.llm),
        "--train_file",
        str(train_file),
        "--image_root",
        str(paths.images),
        "--output_dir",
        str(paths.model(pivot)),
        "--load_in_8bit",
        "--max_steps",
        str(r.steps),
        "--per_device_train_batch_size",
        str(r.batch_size),
        "--learning_rate",
        str(r.learning_rate),
        "--qformer_learning_rate",
        str(r.qformer_learning_rate),
        "--lora_learning_rate",
        str(r.lora_learning_rate),
        "--lora_r",
        str(r.lora_r),
        "--lora_alpha",
        str(2 * r.lora_r),
        "--lora_dropout",
        "0.0",
        "--warmup_steps",
        str(max(1, r.steps // 20)),
        "--lr_scheduler_type",
        "cosine",
        "--weight_decay",
        "0.0",
        # The demo's settings where train_mblip.py's defaults (the official recipe) differ: fp32, no augmentation or
        # activation checkpointing, no token limit, a fresh projection, and one optimizer step per batch.
        "--bf16",
        "false",
        "--augment",
        "false",
        "--activation_checkpointing",
        "false",
        "--max_length",
        "0",
        "--projection_init",
        "random",
        "--gradient_accumulation_steps",
        "1",
        "--logging_steps",
        str(max(1, r.steps // 60)),
        "--save_strategy",
        "steps",
        "--save_steps",
        str(max(1, r.steps // 3)),
        "--save_total_limit",
        "1",
        "--report_to",
        "none",
        "--seed",
        str(seed),
        "--dataloader_num_workers",
        "0",
        # Every part was made by this demo, so the model carries the toolkit's own licence.
        "--license",
        PROJECT_LICENSE,
    ]


def realign_job(arguments: list[str]) -> float:
    from mblip import training as train_mblip

    start = time.perf_counter()
    train_mblip.main(arguments)
    return time.perf_counter() - start


def realign(paths: Paths, budget: Budget, seed: int, pivot: bool, timings: dict) -> None:
    jobs, names = [], []
    for variant in (False, True) if pivot else (False,):
        name = "realign_pivot" if variant else "realign"
        if done(paths.model(variant)):
            logger.info("%s: %s exists, skipped", name, paths.model(variant))
            continue
        jobs.append((realign_job, realign_arguments(paths, budget, seed, variant)))
        names.append(name)
    if jobs:
        logger.info("re-aligning with train_mblip.py: %s", " and ".join(names))
        timings.update(zip(names, run_side_by_side(jobs)))


# ================================================================================================ 4. evaluation
def evaluation_arguments(paths: Paths, budget: Budget, pivot: bool, task: str) -> list[str]:
    data = paths.xm3600 if task == "xm3600" else paths.xgqa
    arguments = [
        "--model",
        str(paths.model(pivot)),
        "--task",
        task,
        "--languages",
        ",".join(LANGUAGES),
        "--data_dir",
        str(data),
        "--image_dir",
        str(paths.images),
        "--output_dir",
        str(paths.eval(pivot)),
        "--batch_size",
        str(budget.eval_batch_size),
    ]
    if budget.num_beams is not None:
        arguments += ["--num_beams", str(budget.num_beams)]
    return arguments


def evaluated(paths: Paths, pivot: bool, task: str) -> bool:
    """Results exist and are newer than the model they score."""
    results = paths.eval(pivot) / task / "results.md"
    model = paths.model(pivot) / "config.json"
    return results.is_file() and results.stat().st_mtime >= model.stat().st_mtime


def evaluate_job(paths: Paths, budget: Budget, pivot: bool) -> dict:
    """Both benchmarks through eval/ (its table goes to the log, not to stdout); returns the markdown tables."""
    from mblip.evaluation.run import main as eval_main

    start, tables = time.perf_counter(), {}
    for task in ("xm3600", "xgqa"):
        if evaluated(paths, pivot, task):
            logger.info("eval %s (%s): results exist, skipped", task, paths.model(pivot).name)
            continue
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            eval_main(evaluation_arguments(paths, budget, pivot, task) + ["--overwrite"])
        tables[task] = captured.getvalue().strip()
    return {"seconds": time.perf_counter() - start, "tables": tables}


def evaluate(paths: Paths, budget: Budget, pivot: bool, timings: dict) -> None:
    variants = [
        v
        for v in ((False, True) if pivot else (False,))
        if not all(evaluated(paths, v, task) for task in ("xm3600", "xgqa"))
    ]
    if not variants:
        logger.info("eval: results exist and are newer than the models, skipped")
        return
    jobs = [(evaluate_job, paths, budget, variant) for variant in variants]
    for variant, result in zip(variants, run_side_by_side(jobs)):
        timings["eval_pivot" if variant else "eval"] = result["seconds"]


# ================================================================================================ main
def main(output_dir: str = "outputs/demo", quick: bool = False, english_pivot: bool = False, seed: int = 0) -> dict:
    """Runs (or resumes) the whole demo and returns its report: per-language scores, samples, timings, files."""
    import torch

    from .report import build_report, format_report, write_charts

    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.setLevel(logging.INFO)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built here; never wait for a hub
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        budget = QUICK if quick else FULL
        paths = Paths(output_dir)
        check_settings(paths, {"seed": seed, "quick": quick, "budget": asdict(budget)})
        timings: dict[str, float] = {}
        start = time.perf_counter()

        step = time.perf_counter()
        rows = build_world(paths, budget, seed)
        timings["world"] = time.perf_counter() - step
        build_parts(paths, rows, budget, seed, timings)
        realign(paths, budget, seed, english_pivot, timings)
        evaluate(paths, budget, english_pivot, timings)

        step = time.perf_counter()
        report = build_report(paths, rows, english_pivot)
        write_charts(paths, report)
        timings["report"] = time.perf_counter() - step
        timings["total"] = time.perf_counter() - start
        report["timings"] = {k: round(v, 1) for k, v in timings.items()}
        atomic_write_json(paths.root / "report.json", report)
        print(format_report(report))
        return report
    finally:
        torch.set_num_threads(threads)


def parse_args(argv: list[str] | None = None) -> DemoArguments:
    from mblip.arguments import parse_args as parse_arguments

    (arguments,) = parse_arguments(DemoArguments, argv, description=__doc__.split("\n\n")[0])
    return arguments


if __name__ == "__main__":
    main(**asdict(parse_args()))
