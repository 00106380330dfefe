"""BENCHMARKS.md from benchmarks/*.json: every comparison, its spread, the goals, and what is not measured yet."""

from __future__ import annotations

import json
from pathlib import Path


INFERENCE_GOAL = 1.0  # issue 8: at least as fast as transformers' BLIP-2, with identical tokens
TRAINING_GOAL = 1.3  # issue 4: >= 1.3x the baseline's samples/s ...
MEMORY_TOLERANCE = 1.01  # ... with no more peak memory (1 % for page rounding and allocator noise)
TRANSLATION_GOAL = 1.5  # issue 5: >= 1.5x the naive loop's sentences/s, same outputs
ENGINE_GOAL = 3.0  # issue 19: CTranslate2 >= 3x the transformers engine's sentences/s ...
ENGINE_IDENTICAL_SHARE = 0.99  # ... with float32 outputs identical on >= 99 % of sentences, the rest near-ties
CACHED = "mblip_cached"  # bench/training.py: train_mblip.py --image_features_cache
DEFAULTS = "mblip_defaults"  # bench/training.py: train_mblip.py's defaults (the official recipe)

GPU_INFERENCE = "python -m mblip.bench --device cuda --full_size --only inference"
GPU_INFERENCE_FAST = "python -m mblip.bench --device cuda --full_size --only inference --static_cache --compile"
GPU_TRAINING = "python -m mblip.bench --device cuda --full_size --only training --train_families mt5 bloom"
GPU_TRANSLATION = (
    "python -m mblip.bench --device cuda --only translation --translation_comparisons engines "
    "--translation_model facebook/nllb-200-distilled-1.3B"
)


# ---------------------------------------------------------------------------------------------------- formatting
def _with_sign_test(r: dict) -> dict:
    from .common import sign_test

    return r if "wins" in r or "values" not in r else {**r, **sign_test(r["values"])}


def ratio(r: dict | None, who: str = "mBLIP") -> str:
    if not r:
        return "n/a"
    r = _with_sign_test(r)
    text = f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"
    if "wins" in r:
        text += f", {who} faster in {r['wins']}/{r['n']}"
    return text


def parity_verdict(r: dict, goal: float) -> str:
    """Against a goal of parity: a median under the goal is only 'slower' when the rounds agree (sign test)."""
    r = _with_sign_test(r)
    if r["median"] >= goal:
        return "met"
    if r.get("p_value", 0.0) >= 0.05:
        return f"parity within noise (median {1 - r['median']:.0%} under, sign test p={r['p_value']:.2f})"
    return f"not met: slower in {r['n'] - r['wins']}/{r['n']} rounds (p={r['p_value']:.3f})"


def seconds(s: dict) -> str:
    return f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


def mib(values) -> str:
    values = [v for v in (values or []) if v is not None]
    if not values:
        return "n/a"
    text = "/".join(f"{v / 2**20:.1f}" for v in values)
    return text


def share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def load(results_dir: str | Path) -> dict[str, dict]:
    files = sorted(Path(results_dir).glob("*.json"))
    return {f.stem: json.loads(f.read_text(encoding="utf-8")) for f in files}


# ---------------------------------------------------------------------------------------------------- sections
def machine_section(name: str, data: dict) -> list[str]:
    m = data["machine"]
    rows = [
        ["CPU", m.get("cpu")],
        ["CPUs (usable / logical)", f"{m.get('usable_cpus')} / {m.get('logical_cpus')}"],
        ["torch threads in the timed code", _threads(data)],
        ["memory", f"{m.get('memory_gib')} GiB"],
        ["GPU", m.get("gpu", "none")],
        ["python", m.get("python")],
        ["torch", m.get("torch")],
        ["transformers", m.get("transformers")],
        ["peft", m.get("peft")],
        ["bitsandbytes", m.get("bitsandbytes")],
        ["accelerate", m.get("accelerate")],
        ["platform", m.get("platform")],
    ]
    for label, info in measuring_runs(data):
        rows.append([label, f"{info.get('started')} `{info.get('command')}`{_other_machine(m, info.get('machine'))}"])
    seconds_taken = data.get("seconds", {})
    if seconds_taken:
        rows.append(["wall time of the last run", ", ".join(f"{k} {v:.0f} s" for k, v in seconds_taken.items())])
    return [f"### Machine ({name})", "", *table(["", ""], rows), ""]


def measuring_runs(data: dict) -> list[tuple[str, dict]]:
    """(what it measured, run) for every run whose rows are in `data`: a partial run replaces only its own rows, so
    the rows of one results file can come from several runs, even from several machines."""
    found = {}
    for part in data.get("inference", []):
        for family, entry in part["families"].items():
            found.setdefault(_run_key(entry.get("run")), (entry.get("run"), []))[1].append(
                f"inference {part['setup'].get('llm_dtype')} {family}"
            )
    for family, entry in data.get("training", {}).get("families", {}).items():
        for name, config in entry.get("configs", {}).items():
            found.setdefault(_run_key(config.get("run")), (config.get("run"), []))[1].append(
                f"training {family} {name}"
            )
    for comparison in ("ordering", "engines"):  # bench/__main__.py's merge_translation keeps each one's run
        info = data.get("translation", {}).get(f"{comparison}_run")
        if info:
            found.setdefault(_run_key(info), (info, []))[1].append(f"translation {comparison}")
    runs = [(", ".join(what) + " run", info) for key, (info, what) in found.items() if info is not None]
    # Results measured before rows carried their run: the part-level record.
    for part, info in data.get("runs", {}).items():
        stamped = any(label.startswith(part) or f", {part} " in label for label, _ in runs)
        if not stamped and (part != "translation" or "translation" in data):
            runs.append((f"{part} run", info))
    return runs


def _run_key(info: dict | None) -> tuple:
    return (info or {}).get("command"), (info or {}).get("started")


def _other_machine(machine: dict, run_machine: dict | None) -> str:
    """' (on another machine: ...)' when a run's machine differs from the results file's (the latest run's)."""
    if not run_machine:
        return ""
    keys = ("cpu", "gpu", "usable_cpus", "memory_gib", "torch", "transformers", "peft", "bitsandbytes", "accelerate")
    differ = [f"{k} {run_machine.get(k)}" for k in keys if run_machine.get(k) != machine.get(k)]
    return f" (on another machine or software: {', '.join(differ)})" if differ else ""


def _threads(data: dict) -> str:
    for part in data.get("inference", []):
        return str(part["setup"].get("threads"))
    if "training" in data:
        return str(data["training"]["setup"].get("threads"))
    return "?"


def inference_rows(data: dict):
    for part in data.get("inference", []):
        setup = part["setup"]
        for family, entry in part["families"].items():
            for batch, row in entry["batches"].items():
                yield setup, family, entry, int(batch), row


def summary_section(data: dict) -> list[str]:
    rows = []
    for setup, family, entry, batch, row in inference_rows(data):
        speed = row["speedup_vs_blip2"]
        tokens = row["tokens"]
        identical = tokens["identical"]
        verdict = parity_verdict(speed, INFERENCE_GOAL) if identical else "not met: tokens differ"
        rows.append(
            [
                f"inference, {entry['llm']} {setup['llm_dtype']}, batch {batch}",
                f">= {INFERENCE_GOAL:.1f}x BLIP-2 images/s, identical tokens",
                f"{ratio(speed)}; tokens {tokens['identical_rows']}/{tokens['rows']} rows identical",
                verdict,
            ]
        )
    training = data.get("training")
    if training:
        for family, entry in training["families"].items():
            for name, cfg in entry["configs"].items():
                for baseline in cfg["baselines"]:
                    side = cfg["sides"][baseline]
                    rows.append(
                        training_goal_row(
                            f"training, {entry['llm']} {name}, vs {_baseline_name(baseline)}",
                            side["speedup_of_mblip"],
                            side.get("memory_ratio_of_mblip"),
                        )
                    )
                cached = cfg["sides"].get(CACHED)
                for baseline in cfg["baselines"] if cached else ():
                    rows.append(
                        training_goal_row(
                            f"training, {entry['llm']} {name}, `--image_features_cache`, vs {_baseline_name(baseline)}",
                            cached["speedup_vs"][baseline],
                            cached.get("memory_ratio_vs", {}).get(baseline),
                        )
                    )
    translation = data.get("translation", {})
    for result in translation.get("results", []):
        speed = result.get("speedup_per_round")
        profile = result.get("setup", {}).get("profile", "")
        rows.append(
            [
                f"translation, {profile}",
                f">= {TRANSLATION_GOAL}x the naive loop's sentences/s, identical outputs",
                f"{ratio(speed, 'sorted')}; outputs {result.get('n_identical')}/{result.get('setup', {}).get('n_sentences')} identical",
                translation_verdict(speed, result.get("identical_outputs")),
            ]
        )
    for result in translation.get("engines", []):
        checked = result["checked_compute_type"]
        entry = result["compute_types"][checked]
        n = result["setup"]["n_sentences"]
        rows.append(
            [
                f"translation engine, {result['setup']['profile']}, CTranslate2 {checked}{_engine_size(result)}",
                f">= {ENGINE_GOAL:.0f}x the transformers engine's sentences/s, outputs identical on "
                f">= {ENGINE_IDENTICAL_SHARE:.0%} (the rest near-ties)",
                f"{ratio(entry['speedup_per_round'], 'CTranslate2')}; outputs {entry['n_identical']}/{n} identical",
                engine_verdict(result),
            ]
        )
    if not rows:
        return []
    return [
        "### Goals against measurements",
        "",
        *table(["comparison", "goal", "measured: median of per-round ratios (min-max)", "verdict"], rows),
        "",
    ]


def translation_verdict(speed: dict | None, identical: bool | None) -> str:
    reasons = [] if identical else ["outputs differ"]
    if not speed or speed["median"] < TRANSLATION_GOAL:
        reasons.append(f"{speed['median']:.2f}x < {TRANSLATION_GOAL}x" if speed else "not timed")
    return "not met: " + ", ".join(reasons) if reasons else "met"


def _engine_size(result: dict) -> str:
    setup = result["setup"]
    return f", d_model {setup['d_model']}" if setup.get("d_model") else f", {setup.get('model')}"


def engine_verdict(result: dict) -> str:
    """Issue 19's goal, for the first compute type of bench/translation.py's run_engines() (float32 on CPU)."""
    entry = result["compute_types"][result["checked_compute_type"]]
    n = result["setup"]["n_sentences"]
    reasons = []
    if entry["speedup_per_round"]["median"] < ENGINE_GOAL:
        reasons.append(f"{entry['speedup_per_round']['median']:.2f}x < {ENGINE_GOAL:.0f}x")
    if entry["n_identical"] < ENGINE_IDENTICAL_SHARE * n:
        reasons.append(f"outputs {entry['n_identical']}/{n} identical")
    elif entry["n_identical"] < n and not result["near_ties"]:
        reasons.append("a differing output is not a near-tie")
    return "not met: " + ", ".join(reasons) if reasons else "met"


def training_goal_row(label: str, speed: dict, memory: float | None) -> list[str]:
    """Issue 4's goal: >= TRAINING_GOAL x the baseline's samples/s with no more peak memory."""
    reasons = [f"{speed['median']:.2f}x < {TRAINING_GOAL}x"] if speed["median"] < TRAINING_GOAL else []
    if memory is None or memory > MEMORY_TOLERANCE:
        reasons.append("more peak memory" if memory else "memory not measured")
    return [
        label,
        f">= {TRAINING_GOAL}x samples/s, peak memory <= baseline",
        f"{ratio(speed)}; peak memory x{memory:.3f}" if memory else ratio(speed),
        "not met: " + ", ".join(reasons) if reasons else "met",
    ]


def _baseline_name(name: str) -> str:
    return {
        "blip2": "BLIP-2 + peft + Trainer (peft's recipe)",
        "blip2_nonreentrant": "the same with use_reentrant=False",
        "mblip": "mBLIP from pixels",
        DEFAULTS: "mBLIP train_mblip.py defaults (official recipe)",
        CACHED: "mBLIP train_mblip.py --image_features_cache",
    }.get(name, name)


def _side_name(name: str) -> str:
    return {
        "mblip": "mBLIP train_mblip.py, the baseline's settings",
        CACHED: "mBLIP train_mblip.py --image_features_cache",
        DEFAULTS: "mBLIP train_mblip.py defaults (official recipe)",
    }.get(name, _baseline_name(name))


def settings_label(name: str, side: dict) -> str:
    """What a training row trained with, from the settings its run recorded (bench/training.py: trained_settings)."""
    s = side.get("settings")
    if not s:
        # Rows measured before each run recorded its settings: every side then trained like for like.
        return "not recorded (then like for like: the setting's precision and checkpointing, no augmentation, wd 0)"
    rates = s["learning_rates"]
    distinct = sorted(set(rates.values()))
    lr = (
        f"lr {distinct[0]:g}"
        if len(distinct) == 1
        else f"lr {rates['projection']:g}/{rates['qformer']:g}/{rates['lora']:g} (projection/Q-Former/LoRA)"
    )
    schedule = s["lr_scheduler_type"] + (f" + {s['warmup_steps']:g} warm-up steps" if s["warmup_steps"] else "")
    parts = [
        "bf16 mixed precision" if s["bf16"] else "fp32 compute",
        "checkpointing" if s["gradient_checkpointing"] else "no checkpointing",
        "crop+flip" if s["augment"] else "no augmentation",
        f"wd {s['weight_decay']:g}",
        schedule,
        lr,
        f"<= {s['max_length']} tokens" if s["max_length"] else "no token cap",
    ]
    return ", ".join(parts)


def inference_section(data: dict) -> list[str]:
    parts = data.get("inference", [])
    if not parts:
        return []
    setup = parts[0]["setup"]
    lines = [
        "### Inference: batched greedy captioning, mBLIP `generate` vs transformers `Blip2ForConditionalGeneration`",
        "",
        f"Random weights, shared by both sides (the BLIP-2 model's submodules are the mBLIP model's). Greedy, "
        f"exactly {setup['max_new_tokens']} new tokens per image (EOS held back by `min_new_tokens`, padding "
        f"suppressed), padded batches of mixed prompts, {setup['repeats']} alternating rounds (A-B, B-A, ...), "
        f"{setup['threads']} torch thread(s), device {setup['device']}. Seconds are per `generate` call; the speed-up "
        "is the median of the per-round ratios BLIP-2 time / mBLIP time (min-max over rounds). Peak memory: one "
        "value per fresh process (see Method).",
        "",
    ]
    rows = []
    for setup, family, entry, batch, row in inference_rows(data):
        tokens = row["tokens"]
        memory = row.get("peak_memory", {})
        rows.append(
            [
                f"{entry['llm']} ({entry['parameters']['llm'] / 1e6:.1f}M)",
                setup["llm_dtype"],
                batch,
                seconds(row["mblip"]),
                seconds(row["blip2"]),
                f"{row['mblip']['images_per_s']:.1f}",
                f"{row['blip2']['images_per_s']:.1f}",
                ratio(row["speedup_vs_blip2"]),
                f"{tokens['identical_rows']}/{tokens['rows']}" + ("" if tokens["identical"] else " DIFFER"),
                _score_diff(tokens),
                tokens["distinct_tokens"],
                mib(memory.get("mblip", {}).get("values")),
                mib(memory.get("blip2", {}).get("values")),
            ]
        )
    lines += table(
        [
            "LLM (params)",
            "LLM dtype",
            "batch",
            "mBLIP s (min-max)",
            "BLIP-2 s (min-max)",
            "mBLIP img/s",
            "BLIP-2 img/s",
            "speed-up of mBLIP",
            "identical token rows",
            "max score diff",
            "distinct tokens",
            "peak MiB mBLIP",
            "peak MiB BLIP-2",
        ],
        rows,
    )
    extra = [
        (f, b, r) for _, f, _, b, r in inference_rows(data) if "mblip_static_cache" in r or "static_cache_error" in r
    ]
    if extra:
        lines += [
            "",
            "Static KV cache, its decoding step under torch.compile (mBLIP; `--static_cache`), next to eager:",
            "",
        ]
        for family, batch, row in extra:
            if "static_cache_error" in row:
                lines.append(f"- {family}, batch {batch}: not supported ({row['static_cache_error']})")
            else:
                lines.append(
                    f"- {family}, batch {batch}: {row['mblip_static_cache']['images_per_s']:.1f} img/s (eager "
                    f"{row['mblip']['images_per_s']:.1f}), "
                    f"{ratio(row['static_cache_speedup_vs_blip2'])} vs BLIP-2; tokens as without it: "
                    f"{row['static_cache_tokens']['identical']}"
                )
    first = next(iterate_parts(parts), None)
    if first:
        p = first["families"][next(iter(first["families"]))]
        lines += [
            "",
            f"Model: ViT {p['parameters']['vit'] / 1e6:.1f}M parameters at {p['image_size']} px, Q-Former "
            f"{p['parameters']['qformer'] / 1e6:.1f}M, {p['num_query_tokens']} queries, projection "
            f"{p['parameters']['projection'] / 1e6:.2f}M; LLM parameters in the table (embeddings included).",
        ]
    lines.append("")
    return lines


def iterate_parts(parts):
    yield from parts


def _score_diff(tokens: dict) -> str:
    value = tokens.get("max_score_difference")
    if value is None:
        return "n/a"
    return f"{value:.1e} (of {tokens.get('score_scale', 0):.0f})"


def inference_profile_section(data: dict) -> list[str]:
    rows = []
    for setup, family, entry, batch, row in inference_rows(data):
        prof = row.get("profile_mblip")
        if not prof:
            continue
        s = prof["share"]
        first = s.get("llm_encoder", s.get("llm_prefill"))
        rows.append(
            [
                entry["llm"],
                setup["llm_dtype"],
                batch,
                f"{prof['total']:.3f}",
                share(s.get("vit")),
                share(s.get("qformer+projection")),
                ("encoder " if "llm_encoder" in s else "prefill ") + share(first),
                f"{share(s.get('llm_decoder_steps'))} ({prof['decoder_step_count'] - ('llm_prefill' in s)} steps)",
                share(s.get("generate_overhead")),
            ]
        )
    if not rows:
        return []
    return [
        "### Where the inference time goes (mBLIP `generate`)",
        "",
        "Forward hooks on the ViT, the Q-Former (the projection is a single small matmul, counted with it), the "
        "LLM's encoder and the LLM's per-step calls; the rest of `generate` (logits processors, cache bookkeeping, "
        "stopping checks, Python) is the overhead. The run with the median total of 3.",
        "",
        *table(
            [
                "LLM",
                "dtype",
                "batch",
                "total s",
                "ViT",
                "Q-Former",
                "LLM encoder / prefill",
                "decoder steps",
                "generate overhead",
            ],
            rows,
        ),
        "",
    ]


def training_section(data: dict) -> list[str]:
    training = data.get("training")
    if not training:
        return []
    setup = training["setup"]
    lines = [
        "### Training: `train_mblip.py` vs `Blip2ForConditionalGeneration` + peft LoRA + `Trainer`",
        "",
        f"Same starting weights (the baseline loads `convert_mblip.to_blip2`'s export of the mBLIP starting "
        f"point), same jsonl and images, batch {setup['batch_size']}, {setup['steps']} steps of which the first "
        f"{setup['warmup_steps']} are left out of samples/s, LoRA r={setup['lora']['r']} alpha="
        f"{setup['lora']['lora_alpha']} dropout {setup['lora']['lora_dropout']} on every linear layer of the LLM "
        f"but its output layer, Q-Former + queries + projection trained, ViT frozen. mBLIP runs twice: with the "
        f"baseline's settings, like for like (AdamW at {setup['learning_rate']} for every part, no weight decay, no "
        "augmentation, no token cap, the setting's checkpointing: both sides compute the same steps, so their "
        "first-step losses must agree), which the speed goal compares; and with train_mblip.py's defaults, the "
        "official recipe (only the run's shape and the setting's LLM quantization given), which shows what the "
        'recipe costs. Column "trained with" gives the settings each run recorded. '
        f"{setup['repeats']} fresh processes per side in rotating order, {setup['threads']} torch thread(s), "
        f"device {setup['device']}. Peak memory: one further fresh process per side, {setup['memory_steps']} "
        "steps, peak above the resident size once the model, optimizer and data are loaded (activations, "
        "gradients, optimizer state).",
        "",
    ]
    rows = []
    for family, entry in training["families"].items():
        for name, cfg in entry["configs"].items():
            for side_name, side in cfg["sides"].items():
                rows.append(
                    [
                        entry["llm"],
                        name,
                        _side_name(side_name),
                        settings_label(side_name, side),
                        f"{side['samples_per_s']['median']:.2f} ({side['samples_per_s']['min']:.2f}-{side['samples_per_s']['max']:.2f})",
                        "-" if side_name.startswith("mblip") else ratio(side.get("speedup_of_mblip")),
                        f"{side['peak_mib']:.1f}" if side.get("peak_mib") is not None else "n/a",
                        "-"
                        if side_name.startswith("mblip")
                        else (f"{side['memory_ratio_of_mblip']:.3f}" if side.get("memory_ratio_of_mblip") else "n/a"),
                        "yes" if side["vit_output_requires_grad"] else "no",
                        f"{side['first_loss']:.4f}" if side.get("first_loss") is not None else "n/a",
                        f"{side['model_tflops_per_s'] * 1e3:.1f}"
                        + (f" (MFU {side['mfu']:.1%})" if side.get("mfu") else ""),
                    ]
                )
    lines += table(
        [
            "LLM",
            "setting",
            "side",
            "trained with",
            "samples/s median (min-max)",
            "mBLIP speed-up vs this side",
            "peak MiB above loaded",
            "mBLIP memory / this side",
            "ViT output has a graph",
            "first-step loss",
            "model GFLOP/s",
        ],
        rows,
    )
    lines += [
        "",
        "Settings: `fp32` = fp32 weights, no gradient checkpointing; `int8+gc` = the paper's: 8-bit LLM "
        "(bitsandbytes), vision stack un-quantized, gradient checkpointing; `int4+gc` = 4-bit NF4 LLM. The "
        "defaults run keeps only the setting's LLM quantization; its precision and checkpointing are the recipe's "
        '(bf16 where the GPU supports it, fp32 on CPU; checkpointing on). "mBLIP speed-up vs this side" is '
        "the like-for-like run's; the defaults run's ratios are in the next table. Every side takes one optimizer "
        "step per batch (the recipe accumulates 16 batches: that only makes the optimizer run less often). "
        "samples/s = batch ÷ the median interval between steps after warm-up (data loading included), which "
        "a step slowed by another process on the machine does not move.",
        "",
    ]
    return lines + defaults_section(training) + cached_section(training) + step_ab_section(training)


def _variant_rows(training: dict, variant: str, who: str) -> list[list]:
    """Per-round ratios of a variant run (the cached run, the defaults run) over every other side, and memory."""
    rows = []
    for family, entry in training["families"].items():
        for name, cfg in entry["configs"].items():
            row = cfg["sides"].get(variant)
            if not row:
                continue
            for other, speed in row["speedup_vs"].items():
                memory = row.get("memory_ratio_vs", {}).get(other)
                rows.append(
                    [
                        entry["llm"],
                        name,
                        _variant_other(other) if variant == DEFAULTS else _baseline_name(other),
                        ratio(speed, who),
                        f"{memory:.3f}" if memory else "n/a",
                    ]
                )
    return rows


def defaults_section(training: dict) -> list[str]:
    rows = _variant_rows(training, DEFAULTS, "the recipe")
    if not rows:
        return []
    return [
        "#### What the official recipe costs (`train_mblip.py` with its defaults)",
        "",
        "The same runs, with train_mblip.py's defaults (its settings are in the table above): against mBLIP with the "
        "baseline's settings, the ratio is the recipe's own cost (gradient checkpointing recomputes the forward; "
        "crop+flip costs image work in the data loader; weight decay, schedule and token caps cost next to "
        "nothing); against the baseline it is what a user of the defaults gets. Per-round ratios of the defaults "
        "run's samples/s over each other side's; memory is peak memory above the loaded model.",
        "",
        *table(["LLM", "setting", "vs", "speed-up of the defaults run", "defaults memory / this side"], rows),
        "",
    ]


def cached_section(training: dict) -> list[str]:
    rows = _variant_rows(training, CACHED, "cached")
    if not rows:
        return []
    return [
        "#### Training from cached ViT outputs (`--image_features_cache`)",
        "",
        "The same runs, with train_mblip.py's cache of the frozen ViT's outputs: built once before training (one "
        "ViT forward per image, without a graph: the cost of the first epoch's ViT forwards), then no step runs "
        "the ViT. Only without `--augment`; otherwise the baseline's settings. Per-round ratios of the cached "
        "run's samples/s over each other side's.",
        "",
        *table(["LLM", "setting", "vs", "speed-up of the cached run", "cached memory / this side"], rows),
        "",
    ]


def step_ab_section(training: dict) -> list[str]:
    rows = []
    for family, entry in training["families"].items():
        for name, cfg in entry["configs"].items():
            ab = cfg.get("step_ab")
            if not ab:
                continue
            for side, secs in ab["seconds"].items():
                rows.append(
                    [
                        entry["llm"],
                        name,
                        "mBLIP (train_mblip.load_model)" if side == "mblip" else _baseline_name(side),
                        seconds(secs),
                        "-" if side == "mblip" else ratio(ab["speedup_of_mblip"][side]),
                        f"{ab['losses'][side]:.4f}",
                    ]
                )
    if not rows:
        return []
    first = next(c["step_ab"] for e in training["families"].values() for c in e["configs"].values() if c.get("step_ab"))
    return [
        "#### The same comparison, model only",
        "",
        f"Forward + backward of each side's model on the same {first['rows']} rows, all sides in one process, "
        f"taking turns for {first['rounds']} rounds (no Trainer, no process start-up between them): what the model "
        "code and its set-up (hooks, checkpointing, logits) cost, with far less noise than separate runs.",
        "",
        *table(
            ["LLM", "setting", "side", "s/step median (min-max)", "mBLIP speed-up vs this side", "warm-up loss"], rows
        ),
        "",
    ]


def training_profile_section(data: dict) -> list[str]:
    training = data.get("training")
    if not training:
        return []
    rows = []
    for family, entry in training["families"].items():
        for name, cfg in entry["configs"].items():
            for side_name, side in cfg["sides"].items():
                p = side["per_step_median_s"]
                rows.append(
                    [
                        entry["llm"],
                        name,
                        {"mblip": "mBLIP", DEFAULTS: "mBLIP defaults"}.get(side_name, side_name),
                        *(
                            f"{p[k]:.3f}" if k in p else "-"
                            for k in (
                                "step",
                                "data",
                                "forward_vit",
                                "forward_qformer",
                                "forward_llm",
                                "forward",
                                "backward",
                                "optimizer",
                            )
                        ),
                    ]
                )
    lines = [
        "### Where a training step's time goes",
        "",
        "Seconds per step, median over runs. Hooks time the forward of the ViT, the Q-Former and the LLM (the "
        "whole forward includes the projection and the input packing); backward = step compute - forward - "
        "optimizer step; data = collation and image loading before each step.",
        "",
        *table(
            [
                "LLM",
                "setting",
                "side",
                "step",
                "data",
                "fwd ViT",
                "fwd Q-Former",
                "fwd LLM",
                "fwd total",
                "backward",
                "optimizer",
            ],
            rows,
        ),
        "",
    ]
    return lines + flops_section(training)


def flops_section(training: dict) -> list[str]:
    from .common import mblip_config
    from .training import estimated_speedup, train_flops_per_sample

    rows = []
    for family, entry in training["families"].items():
        lengths = entry["token_lengths"]
        full = train_flops_per_sample(mblip_config(family, "full", 321), lengths)
        for label, flops in (
            (f"{training['setup']['size']} sizes (measured above)", entry["flops_per_sample"]),
            (
                "full size (ViT-g, Q-Former, "
                + ("mT0-XL" if family == "mt5" else "BLOOMZ-7B1" if family == "bloom" else "Llama-2-7B")
                + ")",
                full,
            ),
        ):
            total = flops["total"]
            measured = ""
            if "sizes" in label:
                cfg = entry["configs"].get("int8+gc")
                if cfg:
                    measured = ratio(cfg["sides"]["blip2"]["speedup_of_mblip"])
            rows.append(
                [
                    entry["llm"],
                    label,
                    f"{total / 1e9:.1f}",
                    share(flops["vit"] / total),
                    share(flops["qformer"] / total),
                    share(flops["llm"] / total),
                    share(flops["lora"] / total),
                    f"{estimated_speedup(flops, True):.2f}x",
                    measured or "not measured",
                ]
            )
    return [
        "### Model FLOPs and what the frozen-ViT lever can give",
        "",
        "Model FLOPs per training sample (`bench/training.py: train_flops_per_sample`), with the prompt and target "
        "lengths of the benchmark data: ViT forward only 2·N·patches (frozen, no graph); Q-Former 6·N·queries, "
        "its cross-attention key/value projections 4·N·patches (no input gradient into a frozen ViT); projection "
        "6·N·queries; frozen LLM 4·N·tokens (forward + input gradient), output layer 4·N·positions with a loss; "
        "LoRA 6·N·tokens; attention scores left out. The estimate assumes every FLOP costs the same time: with "
        "gradient checkpointing, the baseline's ViT graph adds the ViT's backward to its input and its "
        "recomputation (2 × its forward) to a step that already recomputes the Q-Former and LLM forwards.",
        "",
        *table(
            [
                "LLM",
                "sizes",
                "GFLOP/sample",
                "ViT",
                "Q-Former",
                "LLM",
                "LoRA",
                "estimated speed-up from the ViT graph alone (int8+gc)",
                "measured (int8+gc vs peft's recipe)",
            ],
            rows,
        ),
        "",
    ]


def translation_section(data: dict) -> list[str]:
    translation = data.get("translation")
    if not translation:
        return []
    lines = []
    if "markdown" in translation:
        lines += [
            "### Translation: length-sorted batches (`data.translate`) vs the naive loop",
            "",
            translation["markdown"],
            "",
            "(Table by `bench/translation.py`.)",
            "",
        ]
    if "engines_markdown" in translation:
        lines += [
            "### Translation engines: CTranslate2 (`data.translate --engine ctranslate2`) vs the transformers engine",
            "",
            translation["engines_markdown"],
            "",
            "Both sides translate the same length-sorted batches with the same decoding settings (greedy, forced "
            "target-language token as CTranslate2's target prefix, each sentence's token budget); the model is "
            "converted once by CTranslate2's own converter (conversion not timed: `data.translate` caches it). "
            "Outputs are compared with the transformers engine's, sentence by sentence. (Table by "
            "`bench/translation.py`, `run_engines`.)",
            "",
        ]
    return lines


def hard_negatives_section(data: dict) -> list[str]:
    part = data.get("hard_negatives")
    if not part:
        return []
    run = part.get("run", {})
    return [
        "### Hard-negative mining (`data.hard_negatives`): CLIP embedding rate, faiss vs torch top-k",
        "",
        part["markdown"],
        "",
        f"(Measured by `{run.get('command', 'python -m mblip.bench.hard_negatives')}` on {run.get('started', '?')}; "
        "table by `bench/hard_negatives.py`.)",
        "",
    ]


METHOD = """### Method

- **Alternation.** Within one run, the sides being compared take turns (A-B, then B-A; three sides rotate), every
  round repeated; each table gives the median and the min-max over rounds, and the speed-up is the median of the
  per-round ratios, because two calls that ran back to back saw the same load on this shared machine.
- **Threads.** One torch thread by default (`--threads`). With two, each OpenMP barrier waits for the slower core,
  and on a 2-core machine shared with other jobs the slower core is often busy: single runs then vary by several
  times. The ratios, not the absolute rates, are the result.
- **Fresh processes.** Training runs and memory measurements each run in a fresh process, forked from a server that
  imported torch, transformers and peft but never ran an operation, so that no run inherits another's allocator state,
  compiled kernels or Trainer globals.
- **Peak memory on CPU.** torch's CPU allocations are invisible to `tracemalloc`, and `ru_maxrss` only ever grows.
  Each measurement runs in a fresh process that first makes glibc return freed memory at once (`mallopt`: a fixed
  64 KiB mmap threshold, so that every tensor buffer of 64 KiB or more is its own mapping, and a zero trim
  threshold); the resident size then tracks the live bytes. The kernel's high-water mark (VmHWM) is reset through
  `/proc/self/clear_refs` just before the measured call (after a warm-up call) or when training begins, and the peak
  is VmHWM minus the resident size at that moment. Those allocator settings slow allocation, so timing runs never
  use them. On CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus the memory allocated at
  the start.
- **Identical tokens.** The warm-up call of each side also returns its tokens and per-step scores: tokens are compared
  row by row (BLIP-2's prompt, or its decoder start token, cut off), and scores wherever both are finite. Random
  weights tend to repeat one token per row, so the score difference is the sharper check.
- **Equal training.** Both training sides must compute the same steps: the first-step losses are compared (same
  weights, data, batches and LoRA initialisation; LoRA B starts at zero).
- **Sizes.** CPU sizes keep the shape of the real models' cost: with the mt5 LLM the ViT does about half the model
  FLOPs of a training sample, as ViT-g does next to mT0-XL; with bloom the LLM dominates, as with BLOOMZ-7B1 (see the
  FLOPs table). ViT 256 wide, 4 layers, 224 px, 16 px patches (197 tokens); Q-Former 128 wide, 2 layers, 32
  queries; mT5 256 wide, 2+2 layers; BLOOM 384 wide, 4 layers; 16k-token vocabularies.
"""


def not_measured_section(results: dict[str, dict]) -> list[str]:
    gpu = [name for name in results if name.startswith("cuda")]
    lines = ["## Not measured yet (no GPU in this work period)" if not gpu else "## GPU runs", ""]
    if not gpu:
        lines += [
            "No GPU was available while these benchmarks were written, so none of the GPU figures below exist "
            "yet. The code paths run (tests exercise them at tiny size on CPU); the numbers do not. On a machine "
            "with an NVIDIA GPU (H100 80 GB or larger for BLOOMZ-7B1 in bf16 at batch 64), run:",
            "",
        ]
    lines += [
        "```bash",
        "# translation sentences/s, CTranslate2 (bfloat16, int8_float16) vs the transformers engine (bf16), real",
        "# NLLB-1.3B weights (downloaded once), batch 64, the three length profiles; writes benchmarks/cuda.json",
        GPU_TRANSLATION,
        "# images/s and peak GPU memory at batch 1/16/64, bf16 / 8-bit / 4-bit LLM, random weights at the real",
        "# shapes (BLIP-2 ViT-g + Q-Former + mT0-XL, and + BLOOMZ-7B1); writes benchmarks/cuda-full.json",
        GPU_INFERENCE,
        "# ... and mBLIP with a static KV cache, the vision stack under torch.compile",
        GPU_INFERENCE_FAST,
        "# training samples/s, MFU and peak GPU memory at batch 8 with gradient checkpointing, 8-bit and 4-bit LLM",
        GPU_TRAINING,
        "```",
        "",
        "What they measure:",
        "",
        "- **Inference**: the same alternating comparison as above, per LLM precision (`--llm_dtypes bfloat16 "
        "int8 int4`; the vision stack stays bf16), peak memory from `torch.cuda.max_memory_allocated`.",
        "- **Training**: `train_mblip.py --load_in_8bit --gradient_checkpointing --bf16` (and `--load_in_4bit`) "
        "against the baseline at the same settings, batch 8, 10 steps (3 left out), from checkpoints written "
        "on the spot (`save_pretrained` of the random full-size model, then `convert_mblip.to_blip2`).",
        "- **MFU** = model FLOPs per sample × samples/s ÷ the GPU's dense bf16 peak (H100 SXM / H200: 989.4 "
        "TFLOP/s; A100: 312; override with `--peak_tflops`). Model FLOPs per sample as in the FLOPs table: "
        "2·N_vit·patches + 6·N_qformer·queries + 4·N_kv·patches + 6·N_proj·queries + 4·N_llm·tokens + "
        "4·N_head·target positions + 6·N_lora·tokens; recomputation under gradient checkpointing is not "
        "counted (it is hardware FLOPs, not model FLOPs), nor are attention scores. The 8-bit / 4-bit LLM is "
        "counted like a bf16 one.",
        "",
    ]
    return lines


def findings_section(results: dict[str, dict]) -> list[str]:
    """What the numbers say, with the numbers; the mechanisms are facts about the code, checked by the tests."""
    lines = ["## Findings", ""]
    for name, data in results.items():
        rows = list(inference_rows(data))
        if rows:
            faster = sum(r["speedup_vs_blip2"]["median"] >= 1.0 for *_, r in rows)
            slower = [
                f"{e['llm']} batch {b}"
                for _, _, e, b, r in rows
                if parity_verdict(r["speedup_vs_blip2"], INFERENCE_GOAL).startswith("not met")
            ]
            same = all(r["tokens"]["identical"] for *_, r in rows)
            lines.append(
                f"- **Inference ({name})**: mBLIP's median is at or above BLIP-2's in {faster} of {len(rows)} "
                f"comparisons; {'none is slower beyond noise (sign test)' if not slower else 'slower beyond noise: ' + ', '.join(slower)}. "
                f"Tokens {'identical in every row' if same else 'DIFFER in some rows'}. Both sides run the same modules "
                "and the LLM's own `generate`, so parity is what to expect; mBLIP's gain is the API (no placeholder "
                "tokens, new tokens only) and, for decoder-only LLMs, less peak memory (see the table)."
            )
        for result in data.get("translation", {}).get("results", []):
            profile, speed = result["setup"]["profile"], result.get("speedup_per_round")
            bound = result.get("decode_positions_over_needed")
            if speed and speed["median"] < TRANSLATION_GOAL and bound:
                lines.append(
                    f"- **Translation ({name}), {profile}**: {speed['median']:.2f}x, under the {TRANSLATION_GOAL}x "
                    "goal. Ordering is the only difference between the sides, and a batch decodes until its longest "
                    f"sentence's token budget: here the naive loop's batches decode {bound['naive']:.2f}x the token "
                    f"positions the sentences' budgets need, sorted batches {bound['sorted']:.2f}x, so ordering can "
                    f"only save {bound['naive_over_sorted']:.2f}x of the decoding (plus some encoder padding) at "
                    "equal batch size. A shard of the real task mix (short answers, questions, captions and "
                    "instructions together) is the task_mix row."
                )
        for result in data.get("translation", {}).get("engines", []):
            entry = result["compute_types"][result["checked_compute_type"]]
            others = "".join(
                f", {e['side']} {e['speedup_per_round']['median']:.2f}x"
                for c, e in result["compute_types"].items()
                if c != result["checked_compute_type"]
            )
            if entry["speedup_per_round"]["median"] < ENGINE_GOAL:
                setup = result["setup"]
                lines.append(
                    f"- **Translation engine ({name}), {setup['profile']}{_engine_size(result)}**: CTranslate2 "
                    f"{result['checked_compute_type']} {entry['speedup_per_round']['median']:.2f}x the transformers "
                    f"engine{others}; under the {ENGINE_GOAL:.0f}x goal. Both engines decode the same batches to the "
                    "same lengths; what CTranslate2 saves in float32 is `generate`'s per-step overhead (Python, "
                    "cache bookkeeping, many small kernels), most of a step for a tiny model and a shrinking share "
                    f"as the matrix products grow ({setup['parameters'] / 1e6:.1f}M parameters here, "
                    f"{setup['threads']} thread(s); compare the rows of other widths). int8 also makes the products "
                    "cheaper. NLLB-1.3B sits far beyond this size: see the GPU command."
                )
        training = data.get("training")
        if not training:
            continue
        for family, entry in training["families"].items():
            for setting, cfg in entry["configs"].items():
                sides = cfg["sides"]
                parts = [
                    f"vs {_baseline_name(b)} {ratio(sides[b]['speedup_of_mblip'])}"
                    + (
                        f", peak memory x{sides[b]['memory_ratio_of_mblip']:.2f}"
                        if sides[b].get("memory_ratio_of_mblip")
                        else ""
                    )
                    for b in cfg["baselines"]
                ]
                graph = [b for b in cfg["baselines"] if sides[b]["vit_output_requires_grad"]]
                lines.append(
                    f"- **Training ({name}), {entry['llm']} {setting}**: "
                    + "; ".join(parts)
                    + "."
                    + (f" The frozen ViT carries a graph in: {', '.join(graph)}." if graph else "")
                )
                if DEFAULTS in sides:
                    row = sides[DEFAULTS]
                    memory = row.get("memory_ratio_vs", {})
                    lines.append(
                        f"- **Training ({name}), {entry['llm']} {setting}, train_mblip.py defaults (official "
                        "recipe)**: "
                        + "; ".join(
                            f"vs {_variant_other(b)} {ratio(r, 'the recipe')}"
                            + (f", peak memory x{memory[b]:.2f}" if memory.get(b) else "")
                            for b, r in row["speedup_vs"].items()
                            if b != CACHED
                        )
                        + "."
                    )
                if CACHED in sides:
                    speeds = sides[CACHED]["speedup_vs"]
                    lines.append(
                        f"- **Training ({name}), {entry['llm']} {setting}, `--image_features_cache`**: "
                        + "; ".join(f"vs {_baseline_name(b)} {ratio(r, 'cached')}" for b, r in speeds.items())
                        + "."
                    )
    lines += ["", FINDINGS]
    return lines


def _variant_other(name: str) -> str:
    return "mBLIP with the baseline's settings" if name == "mblip" else _baseline_name(name)


FINDINGS = """Why:

- **The frozen-ViT lever.** With a quantized LLM, peft's recipe
  `prepare_model_for_kbit_training(model)` (gradient checkpointing on, its default) calls
  `model.enable_input_require_grads()` unless it is told `use_reentrant=False`. In transformers 5 that hooks the input embeddings of *every* sub-model it
  finds, including `Blip2VisionModel.embeddings`: the frozen ViT's output then requires grad, so the ViT is
  checkpointed, recomputed and back-propagated through, for nothing (column "ViT output has a graph"). mBLIP runs its
  ViT under `torch.set_grad_enabled(False)` when the ViT is frozen, whatever hooks are installed. A BLIP-2 user who
  passes `gradient_checkpointing_kwargs={"use_reentrant": False}` avoids the hook: the third side shows how much of
  the gap that closes. Without a quantized LLM and without gradient checkpointing the baseline builds no ViT graph
  either (frozen parameters, pixel inputs without grad), and the two sides do the same work.
- **The logits lever (decoder-only LLMs).** `Blip2ForConditionalGeneration.forward` calls the LLM without
  `logits_to_keep`, so it computes output-layer logits (and their gradient) at every position, the 32 query positions
  and the padding included, and then slices; mBLIP asks only for the text positions + 1. With a 250k vocabulary
  (BLOOMZ) that is the largest activation of the step. At CPU sizes (16k) compare bloom's rows against the careful
  baseline with mt5's: an encoder-decoder LLM's decoder only ever sees the target, so mt5 has no such gap.
"""


def data_scale_section(data: dict | None) -> list[str]:
    from .data_scale import report_section

    return report_section(data) if data else []


def render(results_dir: str | Path = "benchmarks") -> str:
    results = load(results_dir)
    lines = [
        "# Benchmarks",
        "",
        "Side-by-side comparisons against the code a user would otherwise write: transformers' "
        "`Blip2ForConditionalGeneration` for inference, `Blip2ForConditionalGeneration` + peft LoRA + `Trainer` "
        "for training, the naive translation loop and the transformers engine for `data/translate.py`. Generated by "
        "`python -m mblip.bench` (CPU sizes, about 15 minutes on 2 cores) from `benchmarks/*.json`; do not edit by "
        "hand. Performance goals live "
        "here, never in timed tests; `tests/test_bench.py` runs the same code at tiny size.",
        "",
    ]
    if not results:
        lines += ["No results yet: run `python -m mblip.bench`.", ""]
    for name, data in results.items():
        lines += [f"## Results: {name}", ""]
        lines += summary_section(data)
        lines += machine_section(name, data)
        lines += inference_section(data)
        lines += inference_profile_section(data)
        lines += training_section(data)
        lines += training_profile_section(data)
        lines += translation_section(data)
        lines += hard_negatives_section(data)
        lines += data_scale_section(data.get("data_scale"))
    lines += [*findings_section(results), METHOD, *not_measured_section(results)]
    return "\n".join(lines).rstrip() + "\n"
