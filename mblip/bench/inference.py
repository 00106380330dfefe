"""Batched greedy captioning: mBLIP's `generate` against transformers' `Blip2ForConditionalGeneration.generate`.

Both sides run the very same weights: the BLIP-2 model is a transformers `Blip2ForConditionalGeneration` (config as
`convert_mblip.to_blip2` writes it: an `<image>` placeholder token in a spare vocabulary row) whose submodules *are*
the mBLIP model's modules, so no copy can drift and memory holds one set of weights. Each side gets its own
processor's inputs (mBLIP: the prompt; BLIP-2: `num_query_tokens` placeholders + the prompt, from `Blip2Processor`)
and the same pixels. The generated tokens are compared row by row; the timings are of `generate` alone.

    python -m mblip.bench.inference                  # CPU sizes, prints the result as JSON
"""

from __future__ import annotations

import copy
import json
import time
from contextlib import contextmanager

import torch

from .common import (
    alternate,
    image_size,
    in_child,
    mblip_config,
    paired_ratio,
    parameters,
    peak_memory,
    release_freed_memory_eagerly,
    summary,
    sync,
)


# The paper's captioning prompt in several languages and scripts, so that a batch is padded.
PROMPTS = [
    "Caption the image in German.",
    "Caption the image in Hindi.",
    "Question: how many circles are there? Short answer in English:",
    "Caption the image in Chinese.",
    "zwei",
    "Caption the image in Russian, in one short sentence.",
    "Question: what colour is the square? Short answer in French:",
    "Caption the image in Arabic.",
]
LLM_DTYPES = ("float32", "bfloat16", "int8", "int4")


# ---------------------------------------------------------------------------------------------------- models
def build_pair(family: str, size: str, device="cpu", llm_dtype="float32", seed=0):
    """A random mBLIP model, its processor, a BLIP-2 twin sharing its modules, and the twin's processor.

    `llm_dtype` float32 keeps everything in fp32; bfloat16 builds everything in bf16; int8 / int4 quantize the LLM's
    linear layers with bitsandbytes (as `from_pretrained(quantization_config=...)` does) over a bf16 vision stack on
    CUDA (fp32 on CPU, where bf16 matmuls are slow).
    """
    from transformers import Blip2Processor

    from mblip.demo.tiny import square_image_processor, tiny_tokenizer
    from mblip.modeling_mblip import MBlipForConditionalGeneration
    from mblip.processing_mblip import MBlipProcessor

    if llm_dtype not in LLM_DTYPES:
        raise ValueError(f"llm_dtype must be one of {LLM_DTYPES}, got {llm_dtype!r}")
    device = torch.device(device)
    tokenizer = tiny_tokenizer(family)
    # One spare vocabulary row for BLIP-2's <image> placeholder, as convert_mblip.to_blip2 finds in real vocabularies.
    config = mblip_config(family, size, vocab_size=len(tokenizer) + 1)
    build_dtype = (
        torch.bfloat16
        if llm_dtype == "bfloat16" or (llm_dtype in ("int8", "int4") and device.type == "cuda")
        else torch.float32
    )
    torch.manual_seed(seed)
    with default_dtype(build_dtype), device:
        model = MBlipForConditionalGeneration(config)
        with torch.no_grad():
            model.query_tokens.normal_(0.0, 1.0)  # so that the Q-Former's output depends on the queries
    if llm_dtype in ("int8", "int4"):
        quantize_llm(model, bits=8 if llm_dtype == "int8" else 4, device=device)
    model.eval()

    image_processor = square_image_processor(image_size(config))
    processor = MBlipProcessor.for_model_config(config, image_processor, tokenizer)
    blip2_tokenizer = copy.deepcopy(processor.tokenizer)
    blip2_processor = Blip2Processor(image_processor, blip2_tokenizer, num_query_tokens=config.num_query_tokens)
    image_token_id = blip2_tokenizer.convert_tokens_to_ids("<image>")
    blip2 = blip2_twin(model, image_token_id)
    return model, processor, blip2, blip2_processor


@contextmanager
def default_dtype(dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def blip2_twin(model, image_token_id: int):
    """A transformers `Blip2ForConditionalGeneration` whose submodules are `model`'s (same tensors, same objects)."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    if image_token_id >= model.get_input_embeddings().weight.shape[0]:
        raise ValueError(f"<image> id {image_token_id} has no row in the LLM's embeddings; build with a spare row")
    config = Blip2Config(
        vision_config=model.config.vision_config.to_dict(),
        qformer_config=model.config.qformer_config.to_dict(),
        text_config=model.config.text_config.to_dict(),
        num_query_tokens=model.config.num_query_tokens,
        image_token_index=image_token_id,
    )
    with torch.device("meta"):
        blip2 = Blip2ForConditionalGeneration(config)
    for name in ("vision_model", "qformer", "language_projection", "language_model"):
        setattr(blip2, name, getattr(model, name))
    blip2.query_tokens = model.query_tokens
    leftover = [name for name, p in blip2.named_parameters() if p.is_meta]
    assert not leftover, leftover
    return blip2.eval()


def quantize_llm(model, bits: int, device):
    """Swap the LLM's linear layers (not its output layer) for bitsandbytes 8-bit / 4-bit NF4 layers, quantizing the
    current weights: what `from_pretrained(quantization_config=BitsAndBytesConfig(...))` gives, without a round trip
    through disk that would cost minutes at 7B."""
    import bitsandbytes as bnb

    llm = model.language_model
    output_layer = llm.get_output_embeddings()
    compute_dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    for name, module in list(llm.named_modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, torch.nn.Linear) or child is output_layer:
                continue
            weight = child.weight.data.to("cpu")
            if bits == 8:
                layer = bnb.nn.Linear8bitLt(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    has_fp16_weights=False,
                    threshold=6.0,
                )
                layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
            else:
                layer = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=compute_dtype,
                    quant_type="nf4",
                )
                layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                layer.bias = torch.nn.Parameter(child.bias.data.to("cpu"), requires_grad=False)
            setattr(module, child_name, layer.to(device))  # .to(device) quantizes
    return model


# ---------------------------------------------------------------------------------------------------- inputs
def make_inputs(processor, blip2_processor, batch: int, size_px: int, device, dtype, seed=1):
    """The same pixels for both; each side's own prompt encoding."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn((batch, 3, size_px, size_px), generator=generator).to(device, dtype)
    ours = {k: v.to(device) for k, v in processor(text=prompts).items()}
    # Blip2Processor inserts its placeholders only when images come along; its pixels are discarded.
    placeholder_images = [torch.zeros(3, 8, 8)] * batch
    theirs = blip2_processor(images=placeholder_images, text=prompts, padding=True, return_tensors="pt")
    theirs = {k: theirs[k].to(device) for k in ("input_ids", "attention_mask")}
    return pixels, ours, theirs


def generation_kwargs(max_new_tokens: int, static_cache=False, pad_token_id: int = 0) -> dict:
    # Greedy, and exactly max_new_tokens per row (random weights would otherwise stop at random points): equal work.
    # Random weights also favour the padding token; suppressing it keeps the identical-token check informative.
    kwargs = dict(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        suppress_tokens=[pad_token_id],
    )
    if static_cache:
        kwargs["cache_implementation"] = "static"
    return kwargs


def decoding_compile_config(device: torch.device):
    """transformers compiles the decoding step of a static-cache `generate` by itself on GPUs only; the same on CPU
    (default mode: "reduce-overhead" means CUDA graphs), so the static-cache row is what a static cache is for."""
    from transformers import CompileConfig

    config = CompileConfig(mode="default" if device.type == "cpu" else "reduce-overhead")
    config._compile_all_devices = True  # no public switch: generate's auto-compile checks this attribute for CPUs
    return config


def mblip_generate(model, pixels, ours, kwargs):
    return model.generate(pixel_values=pixels, **ours, **kwargs)


def blip2_generate(blip2, pixels, theirs, kwargs):
    """New tokens only: BLIP-2 returns the prompt too for decoder-only LLMs, and the start token for seq2seq ones."""
    out = blip2.generate(pixel_values=pixels, **theirs, **kwargs)
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    if blip2.config.text_config.is_encoder_decoder:
        sequences = sequences[:, 1:]
    else:
        sequences = sequences[:, theirs["input_ids"].shape[1] :]
    if isinstance(out, torch.Tensor):
        return sequences
    out.sequences = sequences
    return out


def with_scores(kwargs: dict) -> dict:
    return {**kwargs, "output_scores": True, "return_dict_in_generate": True}


def compare_generations(ours, theirs) -> dict:
    """Tokens row by row, and the largest difference between the two sides' per-step scores (where both are finite:
    suppressed tokens score -inf on both sides). Random weights repeat tokens, so the scores make the check sharp."""
    result = compare_tokens(ours.sequences, theirs.sequences)
    steps = min(len(ours.scores), len(theirs.scores))
    a = torch.stack([s.float().cpu() for s in ours.scores[:steps]], 1)
    b = torch.stack([s.float().cpu() for s in theirs.scores[:steps]], 1)
    if a.shape != b.shape:
        result["max_score_difference"] = None
        return result
    finite = torch.isfinite(a) & torch.isfinite(b)
    result["scores_finite_alike"] = bool(torch.equal(torch.isfinite(a), torch.isfinite(b)))
    result["max_score_difference"] = float((a - b)[finite].abs().max()) if bool(finite.any()) else 0.0
    result["score_scale"] = float(a[finite].abs().max()) if bool(finite.any()) else 0.0
    return result


def compare_tokens(ours: torch.Tensor, theirs: torch.Tensor) -> dict:
    """Row-by-row equality of two generations, with enough detail to see a failure."""
    ours, theirs = ours.cpu(), theirs.cpu()
    same_shape = ours.shape == theirs.shape
    rows = [same_shape and torch.equal(a, b) for a, b in zip(ours, theirs)] if same_shape else [False] * len(ours)
    first_bad = next((i for i, ok in enumerate(rows) if not ok), None)
    return {
        "identical": same_shape and all(rows),
        "identical_rows": sum(rows),
        "rows": len(ours),
        "shape_mblip": list(ours.shape),
        "shape_blip2": list(theirs.shape),
        "distinct_tokens": len(set(ours.flatten().tolist())),  # > 1: the check is not on a degenerate output
        "first_mismatch": None
        if first_bad is None
        else {
            "row": first_bad,
            "mblip": ours[first_bad].tolist()[:16],
            "blip2": theirs[first_bad].tolist()[:16] if first_bad < len(theirs) else None,
        },
    }


# ---------------------------------------------------------------------------------------------------- where the time goes
class StageTimer:
    """Wall time spent inside chosen modules, per call (forward hooks; CUDA is synchronised at each boundary)."""

    def __init__(self, stages: dict, device="cpu"):
        self.stages, self.device = stages, device
        self.calls = {name: [] for name in stages}
        self._hooks, self._start = [], {}

    def __enter__(self):
        for name, module in self.stages.items():
            self._hooks.append(module.register_forward_pre_hook(self._pre(name)))
            self._hooks.append(module.register_forward_hook(self._post(name)))
        return self

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()

    def _pre(self, name):
        def hook(module, args):
            sync(self.device)
            self._start[name] = time.perf_counter()

        return hook

    def _post(self, name):
        def hook(module, args, output):
            sync(self.device)
            self.calls[name].append(time.perf_counter() - self._start.pop(name))

        return hook


def generation_stages(model) -> dict:
    stages = {"vit": model.vision_model, "qformer+projection": model.qformer}
    if model.config.is_encoder_decoder:
        stages["llm_encoder"] = model.language_model.get_encoder()
    stages["llm_calls"] = model.language_model  # one call per decoding step (the first is the prefill, decoder-only)
    return stages


def profile_generate(model, pixels, ours, kwargs, repeats=3, device="cpu") -> dict:
    """Median seconds per stage of one mBLIP `generate`, and the share of the total."""
    per_run = []
    for _ in range(repeats):
        with StageTimer(generation_stages(model), device) as timer:
            sync(device)
            start = time.perf_counter()
            mblip_generate(model, pixels, ours, kwargs)
            sync(device)
            total = time.perf_counter() - start
        llm = timer.calls["llm_calls"]
        row = {
            "total": total,
            "vit": sum(timer.calls["vit"]),
            "qformer+projection": sum(timer.calls["qformer+projection"]),
        }
        if "llm_encoder" in timer.calls:
            row["llm_encoder"] = sum(timer.calls["llm_encoder"])
            row["llm_decoder_steps"] = sum(llm)
        else:
            row["llm_prefill"] = llm[0] if llm else 0.0
            row["llm_decoder_steps"] = sum(llm[1:])
        row["decoder_step_count"] = len(llm)
        row["generate_overhead"] = total - sum(v for k, v in row.items() if k not in ("total", "decoder_step_count"))
        per_run.append(row)
    # The run with the median total, whole: per-stage medians taken separately would not add up.
    median = dict(sorted(per_run, key=lambda r: r["total"])[len(per_run) // 2])
    median["share"] = {k: v / median["total"] for k, v in median.items() if k not in ("total", "decoder_step_count")}
    return median


# ---------------------------------------------------------------------------------------------------- memory (children)
def _memory_child(family, size, llm_dtype, batch_sizes, max_new_tokens, variant, seed) -> dict:
    """Peak memory of one side's `generate`, per batch size, in a fresh process."""
    release_freed_memory_eagerly()
    torch.manual_seed(seed)
    model, processor, blip2, blip2_processor = build_pair(family, size, "cpu", llm_dtype, seed)
    kwargs = generation_kwargs(max_new_tokens)
    out = {}
    for batch in batch_sizes:
        pixels, ours, theirs = make_inputs(
            processor,
            blip2_processor,
            batch,
            image_size(model.config),
            "cpu",
            model.vision_model.embeddings.patch_embedding.weight.dtype,
        )
        call = (
            (lambda: mblip_generate(model, pixels, ours, kwargs))
            if variant == "mblip"
            else (lambda: blip2_generate(blip2, pixels, theirs, kwargs))
        )
        call()  # warm-up: one-time allocations (thread pools, kernels) are not the method's
        release_freed_memory_eagerly()
        with peak_memory("cpu") as peak:
            call()
        out[batch] = {"bytes": peak.bytes, "method": peak.method}
    return out


# ---------------------------------------------------------------------------------------------------- the comparison
def run(
    families=("mt5", "bloom"),
    size="cpu",
    batch_sizes=(1, 16),
    repeats=10,
    max_new_tokens=10,
    device="cpu",
    llm_dtype="float32",
    memory_repeats=2,
    profile=True,
    static_cache=False,
    compile=False,
    seed=0,
) -> dict:
    """For each family and batch size: both sides' `generate` timed alternately `repeats` times, identical-token
    check, peak memory, and (mBLIP) where the time goes."""
    device = torch.device(device)
    results = {
        "setup": {
            "size": size,
            "device": str(device),
            "llm_dtype": llm_dtype,
            "repeats": repeats,
            "max_new_tokens": max_new_tokens,
            "batch_sizes": list(batch_sizes),
            "memory_repeats": memory_repeats,
            "threads": torch.get_num_threads(),
            "static_cache": static_cache,
            "compile": compile,
        },
        "families": {},
    }
    for family in families:
        model, processor, blip2, blip2_processor = build_pair(family, size, device, llm_dtype, seed)
        if compile:
            # The vision stack has fixed shapes: compile it once for both sides (they share the modules).
            model.vision_model.forward = torch.compile(model.vision_model.forward)
            model.qformer.forward = torch.compile(model.qformer.forward)
        vision_dtype = model.vision_model.embeddings.patch_embedding.weight.dtype
        kwargs = generation_kwargs(max_new_tokens)
        entry = {
            "llm": model.config.text_config.model_type,
            "parameters": {
                "vit": parameters(model.vision_model),
                "qformer": parameters(model.qformer) + model.query_tokens.numel(),
                "projection": parameters(model.language_projection),
                "llm": parameters(model.language_model),
            },
            "num_query_tokens": model.config.num_query_tokens,
            "image_size": image_size(model.config),
            "batches": {},
        }
        for batch in batch_sizes:
            pixels, ours, theirs = make_inputs(
                processor, blip2_processor, batch, image_size(model.config), device, vision_dtype
            )
            # Warm-up, which also gives the tokens and scores to compare.
            generated_mblip = mblip_generate(model, pixels, ours, with_scores(kwargs))
            generated_blip2 = blip2_generate(blip2, pixels, theirs, with_scores(kwargs))
            tokens_mblip = generated_mblip.sequences
            variants = {
                "mblip": lambda: mblip_generate(model, pixels, ours, kwargs),
                "blip2": lambda: blip2_generate(blip2, pixels, theirs, kwargs),
            }
            extra = {}
            if static_cache:
                static_kwargs = generation_kwargs(max_new_tokens, static_cache=True)
                static_kwargs["compile_config"] = decoding_compile_config(device)
                try:
                    tokens_static = mblip_generate(model, pixels, ours, static_kwargs)
                    mblip_generate(model, pixels, ours, static_kwargs)  # second warm-up: compilation settles
                    variants["mblip_static_cache"] = lambda: mblip_generate(model, pixels, ours, static_kwargs)
                    extra["static_cache_tokens"] = compare_tokens(tokens_mblip, tokens_static)
                except Exception as err:  # noqa: BLE001 - e.g. an LLM without static-cache support: reported
                    extra["static_cache_error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            times = alternate(variants, repeats, device)
            row = {
                name: {**summary(values), "images_per_s": batch / summary(values)["median"]}
                for name, values in times.items()
            }
            row["speedup_vs_blip2"] = paired_ratio(times["blip2"], times["mblip"])
            if "mblip_static_cache" in times:
                row["static_cache_speedup_vs_blip2"] = paired_ratio(times["blip2"], times["mblip_static_cache"])
            row["tokens"] = compare_generations(generated_mblip, generated_blip2)
            row.update(extra)
            if device.type == "cuda":
                row["peak_memory"] = {}
                for name, call in variants.items():
                    with peak_memory(device) as peak:
                        call()
                    row["peak_memory"][name] = {"values": [peak.bytes], "method": peak.method}
            if profile:
                row["profile_mblip"] = profile_generate(model, pixels, ours, kwargs, device=device)
            entry["batches"][batch] = row
        model = blip2 = variants = generated_mblip = generated_blip2 = None  # released before the memory runs
        if device.type == "cuda":
            import gc

            gc.collect()
            torch.cuda.empty_cache()  # the next family's model must fit beside nothing of this one
        if device.type == "cpu" and memory_repeats:
            # Each side in its own fresh process, alternating, so that neither inherits the other's freed memory.
            memory = {b: {"mblip": [], "blip2": []} for b in batch_sizes}
            for index in range(memory_repeats):
                for variant in ("mblip", "blip2") if index % 2 == 0 else ("blip2", "mblip"):
                    out = in_child(
                        _memory_child, family, size, llm_dtype, tuple(batch_sizes), max_new_tokens, variant, seed
                    )
                    for b in batch_sizes:
                        memory[b][variant].append(out[b])
            for b in batch_sizes:
                entry["batches"][b]["peak_memory"] = {
                    v: {"values": [m["bytes"] for m in memory[b][v]], "method": memory[b][v][0]["method"]}
                    for v in ("mblip", "blip2")
                }
        results["families"][family] = entry
    return results


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["mt5", "bloom"])
    parser.add_argument("--size", default="cpu", choices=["tiny", "cpu", "full"])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--llm_dtype", default="float32", choices=LLM_DTYPES)
    args = parser.parse_args(argv)
    from .common import require_device

    require_device(args.device)
    result = run(
        args.families, args.size, tuple(args.batch_sizes), args.repeats, device=args.device, llm_dtype=args.llm_dtype
    )
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
