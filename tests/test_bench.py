"""mblip/bench/: the comparisons run end to end at tiny size on CPU, and their checks are computed, not assumed.

No timing is asserted here: performance goals live in BENCHMARKS.md."""

import importlib.util
import json
import math

import pytest
import torch

import mblip.bench.__main__ as bench_main
from mblip.bench import common, inference, training, translation
from mblip.bench.report import render


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """`python -m mblip.bench` at tiny size: inference (bloom, padded batch of 3) and the paper's training setting."""
    root = tmp_path_factory.mktemp("bench")
    argv = [
        "--size",
        "tiny",
        "--only",
        "inference",
        "training",
        "--families",
        "bloom",
        "--batch_sizes",
        "3",
        "--repeats",
        "2",
        "--memory_repeats",
        "1",
        "--train_repeats",
        "1",
        "--train_steps",
        "3",
        "--train_warmup_steps",
        "1",
        "--train_batch_size",
        "2",
        "--train_settings",
        "int8+gc",
        "--results_dir",
        str(root / "results"),
        "--output",
        str(root / "BENCHMARKS.md"),
        "--log_file",
        str(root / "children.log"),
    ]
    threads = torch.get_num_threads()
    try:
        assert bench_main.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return root, json.loads((root / "results" / "cpu-tiny.json").read_text())


def test_inference_result_structure_and_token_check(cli_results):
    _, results = cli_results
    (part,) = results["inference"]
    row = part["families"]["bloom"]["batches"]["3"]
    for side in ("mblip", "blip2"):
        assert row[side]["n"] == 2 and row[side]["min"] <= row[side]["median"] <= row[side]["max"]
        assert row[side]["images_per_s"] > 0
    speed = row["speedup_vs_blip2"]
    assert speed["n"] == 2 and speed["min"] <= speed["median"] <= speed["max"]
    tokens = row["tokens"]
    assert tokens["rows"] == 3 and tokens["shape_mblip"] == [3, 10]
    # Computed from both sides' outputs: it agrees with its own parts.
    assert tokens["identical"] == (tokens["identical_rows"] == 3 and tokens["shape_mblip"] == tokens["shape_blip2"])
    assert math.isfinite(tokens["max_score_difference"]) and tokens["score_scale"] > 0
    memory = row["peak_memory"]
    if common.cpu_peak_supported():
        assert all(v > 0 for side in ("mblip", "blip2") for v in memory[side]["values"])
    profile = row["profile_mblip"]
    assert profile["decoder_step_count"] == 10 and profile["total"] > 0
    assert abs(sum(profile["share"].values()) - 1) < 1e-6


def test_training_result_structure_and_equal_settings(cli_results):
    _, results = cli_results
    entry = results["training"]["families"]["bloom"]
    cfg = entry["configs"]["int8+gc"]
    assert set(cfg["sides"]) == {"mblip", "blip2", "blip2_nonreentrant", "mblip_cached", "mblip_defaults"}
    for name, side in cfg["sides"].items():
        assert side["samples_per_s"]["n"] == 1 and side["samples_per_s"]["median"] > 0
        timed = {"step", "data", "forward_vit", "forward_qformer", "forward_llm", "backward"}
        if name == "mblip_cached":
            timed -= {"forward_vit"}  # the ViT never runs: it is not even called
            assert "forward_vit" not in side["per_step_median_s"] and side["vit_output_requires_grad"] is None
        assert timed <= set(side["per_step_median_s"])
        if common.cpu_peak_supported():
            assert side["peak_bytes"] > 0
    for name in ("blip2", "blip2_nonreentrant"):
        # Same weights, data and steps: the comparison itself is fair only if the first losses agree.
        assert cfg["sides"][name]["first_loss_difference"] < 1e-4
        assert cfg["sides"][name]["speedup_of_mblip"]["n"] == 1
    cached = cfg["sides"]["mblip_cached"]
    assert cached["first_loss_difference"] < 1e-4  # trains the same steps as from pixels
    assert set(cached["speedup_vs"]) == {"mblip", "blip2", "blip2_nonreentrant", "mblip_defaults"}
    ab = cfg["step_ab"]
    assert set(ab["seconds"]) == set(cfg["sides"]) - {"mblip_cached", "mblip_defaults"} and set(
        ab["speedup_of_mblip"]
    ) == {
        "blip2",
        "blip2_nonreentrant",
    }
    assert max(ab["losses"].values()) - min(ab["losses"].values()) < 1e-4
    # The mechanism BENCHMARKS.md explains: peft's kbit recipe gives the frozen ViT a graph; mBLIP never does.
    assert cfg["sides"]["mblip"]["vit_output_requires_grad"] is False
    assert cfg["sides"]["blip2"]["vit_output_requires_grad"] is True
    assert cfg["sides"]["blip2_nonreentrant"]["vit_output_requires_grad"] is False
    assert entry["flops_per_sample"]["total"] == pytest.approx(
        sum(v for k, v in entry["flops_per_sample"].items() if k != "total")
    )


def test_training_sides_record_their_settings(cli_results):
    """The like-for-like mBLIP run trains with the baseline's settings; the defaults run with the official recipe,
    read back from train_mblip.py's own Trainer (so a change of its defaults shows in BENCHMARKS.md)."""
    _, results = cli_results
    sides = results["training"]["families"]["bloom"]["configs"]["int8+gc"]["sides"]
    like, baseline, recipe = sides["mblip"]["settings"], sides["blip2"]["settings"], sides["mblip_defaults"]["settings"]
    assert like == baseline
    assert like["gradient_checkpointing"] and not like["augment"] and like["weight_decay"] == 0.0
    assert like["max_length"] is None and like["lr_scheduler_type"] == "linear" and like["warmup_steps"] == 0
    assert recipe == {
        "quantization": "int8",
        "bf16": False,  # the recipe's precision on CPU
        "gradient_checkpointing": True,
        "augment": True,
        "max_length": 128,
        "weight_decay": 0.1,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 1000,
        "learning_rates": {"projection": 1e-5, "qformer": 1e-5, "lora": 2e-4},
        "gradient_accumulation_steps": 1,  # the bench's one choice: the probe times optimizer steps
    }
    # Crops and flips change the images, so the defaults run's first loss is not compared; every other ratio is.
    assert "first_loss_difference" not in sides["mblip_defaults"]
    assert set(sides["mblip_defaults"]["speedup_vs"]) == set(sides) - {"mblip_defaults"}


def test_report_renders_every_section(cli_results, tmp_path):
    root, _ = cli_results
    text = (root / "BENCHMARKS.md").read_text()
    for heading in (
        "Goals against measurements",
        "Machine",
        "Inference: batched greedy captioning",
        "Where the inference time goes",
        "Training: `train_mblip.py`",
        "model only",
        "Training from cached ViT outputs",
        "What the official recipe costs",
        "Where a training step's time goes",
        "Model FLOPs",
        "Method",
        "Not measured yet (no GPU in this work period)",
    ):
        assert heading in text, heading
    assert "python -m mblip.bench --device cuda --full_size" in text
    # Each training row names what it trained with.
    assert (
        "| mBLIP train_mblip.py defaults (official recipe) | fp32 compute, checkpointing, crop+flip, wd 0.1, cosine"
        in text
    )
    assert (
        "| mBLIP train_mblip.py, the baseline's settings | fp32 compute, checkpointing, no augmentation, wd 0, linear"
        in text
    )
    assert render(tmp_path / "empty").count("No results yet") == 1


def test_translation_comparison_at_tiny_size(tmp_path):
    threads = torch.get_num_threads()
    try:
        result = translation.run(repeats=1, n_sentences=24, batch_size=8, d_model=32, layers=1, profile="uniform")
    finally:
        torch.set_num_threads(threads)
    assert result["identical_outputs"] and result["n_identical"] == 24  # ordering must not change a translation
    assert result["speedup_per_round"]["n"] == 1
    bound = result["decode_positions_over_needed"]
    assert bound["naive"] >= bound["sorted"] >= 1.0
    assert bound["naive_over_sorted"] == pytest.approx(bound["naive"] / bound["sorted"])
    (tmp_path / "cpu.json").write_text(
        json.dumps(
            {
                "machine": result["machine"],
                "translation": {"results": [result], "markdown": translation.markdown([result])},
            }
        )
    )
    text = render(tmp_path)
    (row,) = [line for line in text.splitlines() if line.startswith("| translation, uniform |")]
    met = result["speedup_per_round"]["median"] >= 1.5
    assert row.endswith("| met |") if met else "| not met: " in row
    assert ("**Translation (cpu), uniform**" in text) is not met
    assert "(Table by `bench/translation.py`.)" in text


@pytest.mark.skipif(importlib.util.find_spec("ctranslate2") is None, reason="ctranslate2 is not installed")
def test_engine_comparison_at_tiny_size(tmp_path):
    """CTranslate2 vs the transformers engine: float32 outputs identical, int8 counted, verdict and merge computed."""
    threads = torch.get_num_threads()
    try:
        result = translation.run_engines(
            repeats=1, n_sentences=24, batch_size=8, d_model=32, layers=1, profile="uniform"
        )
    finally:
        torch.set_num_threads(threads)
    float32, int8 = result["compute_types"]["float32"], result["compute_types"]["int8"]
    assert float32["n_identical"] == 24 and result["differences"] == [] and result["near_ties"]
    assert 0 <= int8["n_identical"] <= 24 and int8["speedup_per_round"]["n"] == 1
    assert result["transformers"]["sentences_per_s"] > 0 and result["setup"]["ctranslate2"]
    ordering = {"results": [], "markdown": "ordering table", "ordering_run": {"command": "earlier"}}
    engines = {"engines": [result], "engines_markdown": translation.markdown_engines([result])}
    merged = bench_main.merge_translation(ordering, engines)  # an engines-only run keeps the ordering rows
    assert merged == {**ordering, **engines}
    (tmp_path / "cpu.json").write_text(json.dumps({"machine": result["machine"], "translation": merged}))
    text = render(tmp_path)
    (row,) = [
        line for line in text.splitlines() if line.startswith("| translation engine, uniform, CTranslate2 float32")
    ]
    met = float32["speedup_per_round"]["median"] >= 3.0
    assert row.endswith("| met |") if met else "| not met: " in row
    assert ("**Translation engine (cpu), uniform, d_model 32**" in text) is not met
    assert "### Translation engines: CTranslate2" in text and "ordering table" in text
    assert "--translation_model facebook/nllb-200-distilled-1.3B" in text  # the GPU command


def test_first_difference_measures_the_gap_between_the_two_tokens():
    from mblip.data.tiny_nllb import build_tiny_nllb

    model, tokenizer = build_tiny_nllb()
    source = tokenizer(["A dog runs."], return_tensors="pt")
    start = model.generation_config.decoder_start_token_id
    logits = model(**source, decoder_input_ids=torch.tensor([[start, 5]])).logits[0, -1]
    best, other = logits.topk(2).indices.tolist()
    found = translation.first_difference(model, tokenizer, "A dog runs.", [5, best, 7], [5, other], start)
    assert found["position"] == 1
    assert found["gap"] == pytest.approx((logits[best] - logits[other]).item(), rel=1e-5)
    assert found["relative_gap"] == pytest.approx(found["gap"] / logits.std().item(), rel=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("ctranslate2") is None, reason="ctranslate2 is not installed")
def test_engine_disagreement_compares_the_same_tokens_scored_by_both_engines(tmp_path):
    """The two engines' float32 log-probabilities of the same tokens differ by rounding only; against another model's
    conversion they differ by whole units."""
    from mblip.data.tiny_nllb import build_tiny_nllb
    from mblip.data.translate import CTranslate2Translator, Translator

    models = {seed: build_tiny_nllb(seed=seed) for seed in (0, 1)}
    engines = {}
    for seed, (model, tokenizer) in models.items():
        model.save_pretrained(tmp_path / f"model-{seed}")
        tokenizer.save_pretrained(tmp_path / f"model-{seed}")
        engines[seed] = CTranslate2Translator.from_pretrained(
            tmp_path / f"model-{seed}", compute_type="float32", cache_dir=tmp_path / "ct2", show_progress=False
        )
    reference = Translator(*models[0], show_progress=False)
    texts = ["A dog runs along the beach.", "What color is the bus?", "Two people ride bicycles."]
    ids = translation.sentence_ids(reference, texts, "de")
    assert 0 <= translation.engine_disagreement(reference, engines[0], texts, ids, [0, 1, 2]) < 1e-3
    assert translation.engine_disagreement(reference, engines[1], texts, ids, [0, 1, 2]) > 0.1


def test_decode_positions_counts_each_batch_to_its_longest_budget():
    assert translation.decode_positions([5, 1, 1, 3, 2], batch_size=2) == 5 * 2 + 3 * 2 + 2
    assert translation.decode_positions([5, 3, 2, 1, 1], batch_size=2) == 5 * 2 + 2 * 2 + 1


def test_identical_token_check_detects_a_difference():
    model, processor, blip2, blip2_processor = inference.build_pair("mt5", "tiny")
    pixels, ours, theirs = inference.make_inputs(processor, blip2_processor, 2, 30, "cpu", torch.float32)
    kwargs = inference.with_scores(inference.generation_kwargs(4))
    same = inference.compare_generations(
        inference.mblip_generate(model, pixels, ours, kwargs), inference.blip2_generate(blip2, pixels, theirs, kwargs)
    )
    assert same["identical"] and same["max_score_difference"] < 1e-4  # the encoder-decoder path lines up too
    # Break the twin's projection only (it shares every other module with the mBLIP model).
    projection = torch.nn.Linear(blip2.language_projection.in_features, blip2.language_projection.out_features)
    with torch.no_grad():
        projection.weight.copy_(blip2.language_projection.weight * -3.0)
    blip2.language_projection = projection
    different = inference.compare_generations(
        inference.mblip_generate(model, pixels, ours, kwargs), inference.blip2_generate(blip2, pixels, theirs, kwargs)
    )
    assert different["max_score_difference"] > 1e-2  # random weights may repeat a token either way: scores tell
    mismatch = inference.compare_tokens(torch.tensor([[5, 6], [7, 8]]), torch.tensor([[5, 6], [7, 9]]))
    assert not mismatch["identical"] and mismatch["identical_rows"] == 1 and mismatch["first_mismatch"]["row"] == 1
    assert not inference.compare_tokens(torch.tensor([[5, 6]]), torch.tensor([[5, 6, 7]]))["identical"]


@pytest.mark.parametrize("llm_dtype", ["int8", "int4", "bfloat16"])
def test_gpu_precisions_build_and_agree_at_tiny_size(llm_dtype):
    """The GPU benchmark's LLM precisions (bitsandbytes layers swapped in, or bf16), exercised on CPU."""
    import bitsandbytes as bnb

    model, processor, blip2, blip2_processor = inference.build_pair("bloom", "tiny", llm_dtype=llm_dtype)
    kind = {"int8": bnb.nn.Linear8bitLt, "int4": bnb.nn.Linear4bit}.get(llm_dtype)
    if kind is not None:
        quantized = [n for n, m in model.named_modules() if isinstance(m, kind)]
        assert quantized and all(n.startswith("language_model.") for n in quantized)
    else:
        assert model.language_model.dtype == torch.bfloat16
    assert blip2.language_model is model.language_model
    dtype = model.vision_model.embeddings.patch_embedding.weight.dtype
    pixels, ours, theirs = inference.make_inputs(processor, blip2_processor, 2, 30, "cpu", dtype)
    kwargs = inference.with_scores(inference.generation_kwargs(3))
    result = inference.compare_generations(
        inference.mblip_generate(model, pixels, ours, kwargs), inference.blip2_generate(blip2, pixels, theirs, kwargs)
    )
    assert result["rows"] == 2 and result["shape_mblip"] == [2, 3] and isinstance(result["identical"], bool)


def test_static_cache_variant_at_tiny_size():
    result = inference.run(
        families=("llama",),
        size="tiny",
        batch_sizes=(2,),
        repeats=1,
        max_new_tokens=3,
        memory_repeats=0,
        profile=False,
        static_cache=True,
    )
    row = result["families"]["llama"]["batches"][2]
    assert "static_cache_error" not in row, row.get("static_cache_error")
    assert row["mblip_static_cache"]["n"] == 1 and row["static_cache_tokens"]["rows"] == 2
    assert row["static_cache_speedup_vs_blip2"]["n"] == 1


def test_flops_formula_parts():
    config = common.mblip_config("mt5", "full", 321)
    flops = training.train_flops_per_sample(config, {"prompt": 20, "target": 10})
    vit = sum(p.numel() for n, p in _meta_vit(config).named_parameters() if "position" not in n and "class" not in n)
    assert flops["vit"] == 2 * vit * 257  # ViT-g/14 at 224 px: 256 patches + CLS, forward only
    assert 0.3 < flops["vit"] / flops["total"] < 0.7  # about half of mBLIP mT0-XL's training FLOPs
    # The ViT graph can only add work, and more with checkpointing (recompute + backward) than without.
    assert 1 < training.estimated_speedup(flops, False) < training.estimated_speedup(flops, True)


def _meta_vit(config):
    from transformers.models.blip_2.modeling_blip_2 import Blip2VisionModel

    with torch.device("meta"):
        return Blip2VisionModel(config.vision_config)


def test_cli_rejects_what_it_cannot_run(monkeypatch):
    with pytest.raises(SystemExit):
        bench_main.main(["--full_size"])  # real shapes need a GPU
    with pytest.raises(SystemExit):
        bench_main.main(["--only", "speed"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        common.require_device("cuda")


def test_a_partial_run_replaces_only_the_rows_it_measured():
    """`python -m mblip.bench --only training --families bloom` keeps mt5's rows, and each row names its run."""
    import copy

    machine_a = {"cpu": "cpu A", "torch": "2.13.0"}
    machine_b = {"cpu": "cpu B", "torch": "2.13.0"}
    run_a = {"command": "python -m mblip.bench", "started": "day 1", "machine": machine_a}
    run_b = {
        "command": "python -m mblip.bench --only training --families bloom",
        "started": "day 2",
        "machine": machine_b,
    }
    setup = {"size": "cpu", "steps": 8}

    def family(value, run):
        return {"llm": value, "configs": {"fp32": {"x": value, "run": run}, "int8+gc": {"x": value + 1, "run": run}}}

    old = {"setup": setup, "families": {"mt5": family(1, run_a), "bloom": family(2, run_a)}}
    new = {"setup": setup, "families": {"bloom": {"llm": 3, "configs": {"fp32": {"x": 3, "run": run_b}}}}}
    merged = bench_main.merge_training(copy.deepcopy(old), new)
    assert merged["families"]["mt5"] == old["families"]["mt5"]
    assert merged["families"]["bloom"]["configs"]["fp32"] == {"x": 3, "run": run_b}
    assert merged["families"]["bloom"]["configs"]["int8+gc"] == {"x": 3, "run": run_a}  # not re-measured: kept
    # Other settings: the old rows no longer compare, so the new run replaces them (and says so in the log).
    assert bench_main.merge_training(old, {**new, "setup": {"size": "cpu", "steps": 9}})["families"].keys() == {"bloom"}

    inference_old = [{"setup": {"llm_dtype": "float32"}, "families": {"mt5": {"run": run_a}, "bloom": {"run": run_a}}}]
    inference_new = [{"setup": {"llm_dtype": "float32"}, "families": {"bloom": {"run": run_b}}}]
    merged_inference = bench_main.merge_inference(inference_old, inference_new)
    assert merged_inference[0]["families"] == {"mt5": {"run": run_a}, "bloom": {"run": run_b}}

    from mblip.bench.report import machine_section, measuring_runs

    data = {"machine": machine_b, "training": merged, "inference": merged_inference, "runs": {}}
    runs = dict(measuring_runs(data))
    assert len(runs) == 2
    (label_a,) = [label for label, info in runs.items() if info is run_a]
    assert "inference float32 mt5" in label_a and "training mt5 fp32" in label_a
    lines = "\n".join(machine_section("cpu", data))
    assert "on another machine or software: cpu cpu A" in lines
