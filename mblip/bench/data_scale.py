"""A paper-scale data rehearsal, measured: mBLIP's task mix is about 5M rows over 2.5M images; this one targets 2.5M
rows over 200k JPEGs in 96 languages and measures, for the file-based and the streaming path of train_mblip.py:

- time from `train_mblip` start to the first optimizer step (goals: <= 5 min file-based, <= 1 min streaming),
- peak resident memory of that process (goal: <= 4 GB),
- collation throughput at 224 px from JPEG (goal: >= 120 samples/s on 2 cores),
- how each grows with the number of rows (must be linear or better), and where the time goes.

    python -m mblip.bench --only data_scale                 # CPU size: 2k JPEGs, 25k and 250k rows, a few minutes
    python -m mblip.bench.data_scale --size tiny            # seconds (tests)

Generating and checking 200k images of 30-100 KB (about 15 GB) does not fit this machine's disk or time, so the
paper-scale numbers are extrapolated from measured ones, and the report says how: every run trains on rows that
refer to a realistic subset of JPEGs (2k at the CPU size); runs at two row counts (x10 apart) give the per-row cost
of time and memory, and a separate check of the subset's distinct images gives the per-image cost, in parallel on
this machine's cores. Paper scale = measured(largest rows) + per-row x extra rows + per-image x extra images.
"""

import json
import logging
import os
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np


logger = logging.getLogger("bench")

PAPER = {"rows": 2_500_000, "images": 200_000, "languages": 96}
SIZES = {
    "tiny": {"images": 24, "rows": [300, 3000], "collate_rows": 48, "batch": 16},
    "cpu": {"images": 2000, "rows": [25_000, 250_000], "collate_rows": 768, "batch": 32},
}
GOALS = {"first_step_file_s": 300, "first_step_stream_s": 60, "peak_rss_gib": 4.0, "collate_samples_per_s": 120}
TASKS = {
    "caption": "Caption the image in {language}.",
    "vqa": "Question: What is shown? Short answer in {language}:",
    "short_caption": "Briefly describe the image in {language}.",
}
WORDS = "sky tree house river street cat dog mountain market bridge garden boat bicycle window child lamp".split()


# ---------------------------------------------------------------------------------------------------- data
def make_images(folder: Path, count: int, seed: int = 0) -> dict:
    """`count` 640x480 JPEGs of realistic size (about 30-100 KB): smooth colour fields plus grain, at quality 85."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = []
    for index in range(count):
        path = folder / f"{index:06d}.jpg"
        if not path.is_file():
            base = rng.integers(0, 256, (15, 20, 3)).astype(np.uint8)
            image = np.asarray(Image.fromarray(base).resize((640, 480), Image.BICUBIC)).astype(np.int16)
            grain = rng.normal(0, rng.uniform(3.5, 12), image.shape).astype(np.int16)
            Image.fromarray(np.clip(image + grain, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=85)
        sizes.append(path.stat().st_size)
    return {
        "count": count,
        "kib_min": min(sizes) / 1024,
        "kib_mean": float(np.mean(sizes)) / 1024,
        "kib_max": max(sizes) / 1024,
    }


def make_mix(path: Path, rows: int, images: int, seed: int = 0) -> None:
    """A task mix in mBLIP's release columns: `rows` rows over `images` images, 96 languages, three tasks."""
    from mblip.data.languages import LANGUAGES

    if path.is_file():
        return
    rng = random.Random(seed)
    languages = [(language.code, language.name) for language in LANGUAGES][: PAPER["languages"]]
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(rows):
            code, name = rng.choice(languages)
            task = rng.choice(sorted(TASKS))
            label = " ".join(rng.choices(WORDS, k=rng.randint(2, 9)))
            row = {
                "image_id": f"{rng.randrange(images):06d}.jpg",
                "context": TASKS[task].format(language=name),
                "label": label,
                "lang": code,
                "task": task,
            }
            handle.write(json.dumps(row) + "\n")


def make_model(folder: Path) -> str:
    from mblip.cards import model_card
    from mblip.hub import save_model_repository

    from .inference import build_pair

    if not (folder / "config.json").is_file():
        model, processor, _, _ = build_pair("mt5", "tiny")
        save_model_repository(model, processor, folder, model_card("bench", "random weights", []), overwrite=True)
    return str(folder)


# ---------------------------------------------------------------------------------------------------- measurements
def first_step(spec: dict) -> dict:
    """One train_mblip run (in a fresh process): seconds from its start to the first optimizer step, by phase, and the
    process's peak resident memory."""
    from transformers import TrainerCallback

    from mblip import training, training_data

    phases, start = {}, time.perf_counter()

    def timed(module, name, label):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - t0

        setattr(module, name, wrapper)

    timed(training_data, "load_raw_datasets", "load data")
    timed(training_data, "check_split", "check rows and images")
    timed(training, "load_model", "load model")

    class FirstStep(TrainerCallback):
        seconds = None

        def on_train_begin(self, args, state, control, **kwargs):
            phases["until train loop"] = time.perf_counter() - start

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1 and FirstStep.seconds is None:
                FirstStep.seconds = time.perf_counter() - start

    argv = [
        "--model_name_or_path",
        spec["model"],
        "--train_file",
        spec["train_file"],
        "--image_root",
        spec["image_root"],
        "--output_dir",
        spec["output_dir"],
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "1",
        "--load_in_8bit",
        "false",
        "--bf16",
        "false",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--dataloader_num_workers",
        "0",
        "--warmup_steps",
        "0",
        "--data_check_cache",
        spec["check_cache"],
        "--preprocessing_num_workers",
        str(spec["workers"]),
        "--overwrite",
        "true",
    ]
    if spec["streaming"]:
        argv += ["--streaming"]
    training.main(argv, callbacks=[FirstStep()])
    seconds = FirstStep.seconds
    phases["first step (from train loop)"] = seconds - phases.get("until train loop", 0.0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    return {"seconds": seconds, "phases": phases, "peak_rss_gib": rss}


def image_check(spec: dict) -> dict:
    """The distinct-image check alone (none cached), at a quarter of the subset's images and at all of them: the
    slope between the two is the cost per image; what the smaller run does not explain is fixed (the check's passes
    over the rows and starting the worker processes), paid once per run whatever the number of images. The workers
    are forked (`training_data.check_pool_context`) even here, where the bench's children default to a fork server:
    started that way, or spawned (Python 3.14's default on Linux is a fork server), each would import torch and
    transformers through the `mblip` package before checking an image (19-37 s fixed on 2 cores, against ~0.1 s)."""
    import datasets

    from mblip import training, training_data

    names = sorted(os.listdir(spec["image_root"]))
    # Both points on the parallel path (a paper-scale check always takes it), so that the slope is its cost per
    # image and the intercept its start-up; below PARALLEL_FROM images the check would run in this process.
    training_data.PARALLEL_FROM = 1
    points = {}
    for count in (len(names) // 4, len(names)):
        dataset = datasets.Dataset.from_dict({"image_id": names[:count], "label": ["x"] * count})
        args = training.DataArguments(
            train_file="x.jsonl",
            image_root=spec["image_root"],
            data_check_cache="none",
            prompt_column="",
            preprocessing_num_workers=spec["workers"],
        )
        t0 = time.perf_counter()
        training_data.check_split(dataset, args, "train")
        points[count] = time.perf_counter() - t0
    (small, t_small), (large, t_large) = sorted(points.items())
    per_image = max(t_large - t_small, 0.0) / (large - small)
    return {
        "images": large,
        "seconds": t_large,
        "seconds_by_images": {str(k): v for k, v in points.items()},
        "per_image_ms": 1000 * per_image,
        "fixed_s": max(t_large - per_image * large, 0.0),
    }


def collation(spec: dict) -> dict:
    """Samples/s of MBlipCollator at 224 px from the JPEGs (official augmentation on), in one process and with
    DataLoader workers, one per core: the steady state a long training run sees. In one process that is one pass over
    the rows. With workers it is the second of two passes through the same loader with persistent workers: the
    workers' start-up, paid once per epoch (an epoch of a real run is millions of rows), would otherwise dominate a
    pass of a few hundred rows; it is reported apart as `worker_start_s` (first pass minus second). The second pass
    does the same work as the first: each row's crop depends on (seed, epoch, row), and both passes are epoch 0."""
    import torch

    from mblip import training
    from mblip.processing_mblip import MBlipProcessor

    processor = MBlipProcessor.from_pretrained(spec["model"])
    processor.image_processor.size = {"height": 224, "width": 224}
    rows = [json.loads(line) for line in open(spec["train_file"], encoding="utf-8")][: spec["collate_rows"]]
    for i, row in enumerate(rows):
        row["_row"] = i
    args = training.DataArguments(train_file="x.jsonl", image_root=spec["image_root"], augment=True)
    collator = training.MBlipCollator(processor, args, augment=True)
    assert collator(rows[:2])["pixel_values"].shape[-1] == 224
    results, start_up = {}, {}
    for workers in (0, spec["workers"]):
        loader = torch.utils.data.DataLoader(
            rows, batch_size=spec["batch"], collate_fn=collator, num_workers=workers, persistent_workers=workers > 0
        )
        passes = []
        for _ in range(2 if workers else 1):  # with workers: a warm-up pass (starts them), then the timed one
            t0 = time.perf_counter()
            count = sum(batch["pixel_values"].shape[0] for batch in loader)
            passes.append(time.perf_counter() - t0)
        results[f"workers_{workers}"] = count / passes[-1]
        if workers:
            start_up[f"workers_{workers}"] = max(passes[0] - passes[-1], 0.0)
        del loader  # ends persistent workers
    return {"samples_per_s": results, "worker_start_s": start_up, "batch": spec["batch"], "rows": len(rows)}


# ---------------------------------------------------------------------------------------------------- the run
def run(size: str = "cpu", workdir: str = "outputs/bench/data_scale", workers: int | None = None) -> dict:
    from . import common

    config = SIZES[size]
    workers = workers or os.cpu_count() or 1
    root = Path(workdir) / size
    t0 = time.perf_counter()
    images = make_images(root / "images", config["images"])
    model = make_model(root / "model")
    generated = time.perf_counter() - t0
    base = {"model": model, "image_root": str(root / "images"), "workers": workers}
    runs = {}
    for rows in config["rows"]:
        train_file = root / f"mix-{rows}.jsonl"
        make_mix(train_file, rows, config["images"])
        for mode in ("file", "file (check cached)", "streaming"):
            spec = dict(
                base,
                train_file=str(train_file),
                streaming=mode == "streaming",
                output_dir=str(root / f"run-{rows}-{mode.split()[0]}"),
                check_cache=str(root / "checks") if "cached" in mode else "none",
            )
            if "cached" in mode:  # the cache is filled by a first run on the same data, not timed here
                common.in_child(first_step, dict(spec, output_dir=spec["output_dir"] + "-fill"))
            runs.setdefault(mode, {})[rows] = common.in_child(first_step, spec)
            logger.info("data_scale %s rows %s: %s", rows, mode, runs[mode][rows])
    checks = common.in_child(image_check, base)
    collate = common.in_child(
        collation,
        dict(
            base,
            train_file=str(root / f"mix-{config['rows'][0]}.jsonl"),
            collate_rows=config["collate_rows"],
            batch=config["batch"],
        ),
    )
    return {
        "size": size,
        "workers": workers,
        "subset": {"images": images, "rows": config["rows"], "generated_s": generated},
        "runs": {mode: {str(k): v for k, v in by_rows.items()} for mode, by_rows in runs.items()},
        "image_check": checks,
        "collation": collate,
        "paper": extrapolate(runs, checks, config),
        "goals": GOALS,
    }


def extrapolate(runs: dict, checks: dict, config: dict) -> dict:
    """Paper scale from the measured points: per-row slopes between the two row counts (same images), plus the
    image check of the images the subset lacks, at the measured per-image cost."""
    small, large = config["rows"]
    extra_rows, extra_images = PAPER["rows"] - large, PAPER["images"] - config["images"]
    out = {}
    for mode, by_rows in runs.items():
        seconds_per_row = (by_rows[large]["seconds"] - by_rows[small]["seconds"]) / (large - small)
        gib_per_row = (by_rows[large]["peak_rss_gib"] - by_rows[small]["peak_rss_gib"]) / (large - small)
        image_seconds = 0.0 if mode != "file" else extra_images * checks["per_image_ms"] / 1000
        out[mode] = {
            "seconds_per_million_rows": max(seconds_per_row, 0.0) * 1e6,
            "gib_per_million_rows": max(gib_per_row, 0.0) * 1e6,
            "growth_250k_to_2_5m": by_rows[large]["seconds"] / by_rows[small]["seconds"],
            "first_step_s": by_rows[large]["seconds"] + max(seconds_per_row, 0.0) * extra_rows + image_seconds,
            "peak_rss_gib": by_rows[large]["peak_rss_gib"] + max(gib_per_row, 0.0) * extra_rows,
            "image_check_s": image_seconds,
        }
    return out


def main(argv=None) -> int:
    from dataclasses import dataclass, field

    from mblip.arguments import MBlipArgumentParser

    @dataclass
    class Arguments:
        size: str = field(default="cpu", metadata={"help": f"One of {sorted(SIZES)}."})
        workdir: str = field(default="outputs/bench/data_scale", metadata={"help": "Generated data and runs."})
        output: str | None = field(default=None, metadata={"help": "Write the results JSON here."})

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = MBlipArgumentParser(Arguments, description=__doc__).parse_command_line(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = run(args.size, args.workdir)
    text = json.dumps(results, indent=1, default=str)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    print(text)
    return 0


def report_section(data: dict) -> list[str]:
    """BENCHMARKS.md's section for a data_scale result."""
    if not data:
        return []
    paper, goals, small, large = data["paper"], data["goals"], *data["subset"]["rows"]
    images = data["subset"]["images"]
    lines = [
        "## Data at the paper's scale (python -m mblip.bench --only data_scale)",
        "",
        f"Task mix of {PAPER['rows']:,} rows over {PAPER['images']:,} JPEGs in {PAPER['languages']} languages, "
        f"extrapolated from measured runs: {images['count']:,} generated JPEGs (640x480, "
        f"{images['kib_min']:.0f}-{images['kib_max']:.0f} KiB, mean {images['kib_mean']:.0f} KiB) referred to by "
        f"{small:,} and {large:,} rows; paper scale = measured at {large:,} rows + the per-row slope between the two "
        f"runs x the extra rows + the image check's measured per-image cost x the extra images "
        f"({data['workers']} processes). Tiny model: the data path is what is measured, not the model.",
        "",
        "| path | first step, " + f"{small:,} rows | first step, {large:,} rows | growth x10 rows | "
        "peak RSS | paper scale: first step | paper scale: peak RSS | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, by_rows in data["runs"].items():
        a, b, p = by_rows[str(small)], by_rows[str(large)], paper[mode]
        goal = goals["first_step_stream_s"] if mode == "streaming" else goals["first_step_file_s"]
        ok = p["first_step_s"] <= goal and p["peak_rss_gib"] <= goals["peak_rss_gib"]
        lines.append(
            f"| {mode} | {a['seconds']:.1f} s | {b['seconds']:.1f} s | x{p['growth_250k_to_2_5m']:.2f} | "
            f"{b['peak_rss_gib']:.2f} GiB | {p['first_step_s']:.0f} s | {p['peak_rss_gib']:.2f} GiB | "
            f"<= {goal} s, <= {goals['peak_rss_gib']} GB: {'met' if ok else 'NOT met'} |"
        )
    check = data["image_check"]
    collate = data["collation"]["samples_per_s"]
    best = max(collate.values())
    lines += [
        "",
        f"Image check: {check['images']:,} distinct JPEGs in {check['seconds']:.1f} s; "
        + (
            f"{', '.join(f'{int(k):,} in {v:.1f} s' for k, v in check['seconds_by_images'].items())}: "
            f"{check['per_image_ms']:.2f} ms per image (the slope) + {check['fixed_s']:.1f} s fixed (worker "
            "processes, cache files); "
            if "seconds_by_images" in check
            else f"{check['per_image_ms']:.2f} ms per image; "
        )
        + f"the extra {PAPER['images'] - images['count']:,} images of the paper's scale: "
        f"{paper['file']['image_check_s']:.0f} s, once (later runs on the same data reuse the cached check, row "
        "'file (check cached)').",
        "",
        "Collation at 224 px from JPEG, official augmentation on, batch "
        f"{data['collation']['batch']}: "
        + ", ".join(f"{k.replace('_', ' ')}: {v:.0f} samples/s" for k, v in collate.items())
        + "".join(
            f" ({k.replace('_', ' ')}: steady state, after {v:.1f} s of worker start-up paid once per epoch)"
            for k, v in data["collation"].get("worker_start_s", {}).items()
        )
        + f" (goal >= {goals['collate_samples_per_s']} on 2 cores: {'met' if best >= goals['collate_samples_per_s'] else 'NOT met'}).",
        "",
        f"Where the time to the first step goes ({large:,} rows):",
        "",
        "| path | " + " | ".join(next(iter(data["runs"].values()))[str(large)]["phases"]) + " |",
        "|---|" + "---|" * len(next(iter(data["runs"].values()))[str(large)]["phases"]),
    ]
    for mode, by_rows in data["runs"].items():
        phases = by_rows[str(large)]["phases"]
        keys = next(iter(data["runs"].values()))[str(large)]["phases"]
        lines.append(f"| {mode} | " + " | ".join(f"{phases.get(k, 0.0):.1f} s" for k in keys) + " |")
    return lines + [""]


if __name__ == "__main__":
    sys.exit(main())
