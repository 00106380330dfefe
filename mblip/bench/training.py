"""Re-alignment training: `train_mblip.py` against what a user would write without this project.

The baseline is transformers' `Blip2ForConditionalGeneration` + peft LoRA + `Trainer`, the recipe of the peft docs:
`from_pretrained(quantization_config=...)` (vision stack left un-quantized so that the Q-Former can train),
`prepare_model_for_kbit_training(model, use_gradient_checkpointing=...)` when quantized, `get_peft_model` with LoRA on
the LLM's linear layers, the Q-Former, queries and projection unfrozen, and a collator that builds the same token ids
as `MBlipProcessor`. Both sides load the same weights (`convert_mblip.to_blip2` of the mBLIP starting point), read the
same jsonl and images, and use the same batch size, steps, optimizer, LoRA shape and trainable parts.

The mBLIP side runs twice: with the baseline's settings (`mblip`, like for like: same precision, same gradient
checkpointing, no augmentation, no weight decay, a linear schedule without warm-up, one learning rate, no token cap),
which is what the speed goal compares; and with train_mblip.py's defaults, the official recipe (`mblip_defaults`:
augmentation, gradient checkpointing, weight decay 0.1, cosine schedule with warm-up, per-part learning rates,
128-token caps, bf16 where the GPU supports it), which shows what the recipe costs. Only the run's shape (batch,
steps, one optimizer step per batch) and the setting's LLM quantization are passed to the defaults run. Every side
records the settings it trained with.

Each run is a fresh process (forked from a server that has imported the libraries): A and B alternate, repeated.
Timing runs and memory runs are separate, because the memory runs make glibc return freed memory eagerly, which
slows allocation.

    python -m mblip.bench.training                   # CPU sizes, prints the result as JSON
"""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .common import (
    in_child,
    mib,
    paired_ratio,
    peak_memory,
    release_freed_memory_eagerly,
    summary,
    sync,
)


LORA = dict(r=8, lora_alpha=16, lora_dropout=0.05)
LEARNING_RATE = 2e-4
CAPTION_PROMPTS = {
    "de": "Caption the image in German.",
    "fr": "Caption the image in French.",
    "ru": "Caption the image in Russian.",
    "zh": "Caption the image in Chinese.",
    "ar": "Caption the image in Arabic.",
    "hi": "Caption the image in Hindi.",
}


# ---------------------------------------------------------------------------------------------------- assets
def prepare(family: str, size: str, workdir: str | Path, rows: int = 64, device="cpu", seed: int = 0) -> dict:
    """A random mBLIP starting point saved as a model repository, its plain BLIP-2 export, images and a jsonl."""
    from PIL import Image, ImageDraw

    from mblip import convert as convert_mblip
    from mblip.cards import model_card
    from mblip.demo.tiny import CORPUS
    from mblip.hub import save_model_repository

    from .inference import build_pair

    workdir = Path(workdir)
    model, processor, _, _ = build_pair(
        family, size, device=device, llm_dtype="bfloat16" if size == "full" else "float32", seed=seed
    )
    save_model_repository(
        model, processor, workdir / "mblip", model_card("bench", "random weights", []), overwrite=True
    )
    convert_mblip.to_blip2(str(workdir / "mblip"), str(workdir / "blip2"), overwrite=True)
    del model

    rng = random.Random(seed)
    side = processor.image_processor.size["height"]
    (workdir / "images").mkdir(exist_ok=True)
    sentences = [s for s in CORPUS if not s.startswith(("Question", "Caption"))]
    with open(workdir / "train.jsonl", "w", encoding="utf-8") as handle:
        for index in range(rows):
            # Shapes on a coloured ground, saved at the ViT's size: decoding is cheap and the same for both sides.
            image = Image.new("RGB", (side, side), tuple(rng.randrange(256) for _ in range(3)))
            draw = ImageDraw.Draw(image)
            for _ in range(3):
                x, y = rng.randrange(side), rng.randrange(side)
                draw.ellipse((x, y, x + side // 4, y + side // 4), fill=tuple(rng.randrange(256) for _ in range(3)))
            image.save(workdir / "images" / f"{index}.png")
            lang = rng.choice(sorted(CAPTION_PROMPTS))
            handle.write(
                json.dumps(
                    {
                        "image_id": f"{index}.png",
                        "context": CAPTION_PROMPTS[lang],
                        "label": rng.choice(sentences),
                        "lang": lang,
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    return {
        "mblip": str(workdir / "mblip"),
        "blip2": str(workdir / "blip2"),
        "train_file": str(workdir / "train.jsonl"),
        "image_root": str(workdir / "images"),
        "workdir": str(workdir),
    }


def token_lengths(assets: dict) -> dict:
    """Mean prompt and target lengths (tokens) of the training rows, for the FLOP count."""
    from mblip.processing_mblip import MBlipProcessor

    processor = MBlipProcessor.from_pretrained(assets["mblip"])
    rows = [json.loads(line) for line in open(assets["train_file"], encoding="utf-8")]
    prompt = processor.tokenizer([r["context"] for r in rows])["input_ids"]
    encoder_decoder = processor.is_encoder_decoder
    target = processor.tokenizer([r["label"] for r in rows], add_special_tokens=encoder_decoder)["input_ids"]
    return {
        "prompt": statistics.mean(map(len, prompt)),
        "target": statistics.mean(map(len, target)) + (0 if encoder_decoder else 1),
    }  # + EOS


# ---------------------------------------------------------------------------------------------------- FLOPs
def train_flops_per_sample(config, lengths: dict, lora_r: int = LORA["r"]) -> dict:
    """Model FLOPs of one training sample (forward + backward, no recomputation), from parameter counts.

    - ViT, frozen and without a graph: forward only, 2 * N_vit * patches.
    - Q-Former (trained): 6 * N * queries, except the cross-attention key/value projections, which read the patches
      and need no input gradient (the ViT is frozen): 4 * N_kv * patches.
    - projection (trained): 6 * N * queries.
    - LLM (frozen base): forward + input gradients, 4 * N * tokens (encoder: queries + prompt; decoder: target;
      decoder-only: queries + prompt + target); output layer 4 * N_head * positions that need logits.
    - LoRA (trained): 6 * N_lora * tokens.
    Attention-score FLOPs (sequence-length squared) and norms are left out; at these lengths they are a few percent.
    """
    from mblip.modeling_mblip import MBlipForConditionalGeneration

    with torch.device("meta"):
        model = MBlipForConditionalGeneration(config)
    vit_embed = {"embeddings.position_embedding", "embeddings.class_embedding"}
    n_vit = sum(p.numel() for n, p in model.vision_model.named_parameters() if n not in vit_embed)
    n_kv = sum(
        p.numel()
        for n, p in model.qformer.named_parameters()
        if "crossattention.attention.key" in n or "crossattention.attention.value" in n
    )
    n_qformer = sum(p.numel() for p in model.qformer.parameters()) - n_kv
    n_projection = sum(p.numel() for p in model.language_projection.parameters())
    llm = model.language_model
    head = llm.get_output_embeddings()
    embeddings = {id(m) for m in llm.modules() if isinstance(m, torch.nn.Embedding)}
    lora_per_linear = {}
    for name, module in llm.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            lora_per_linear[name] = lora_r * (module.in_features + module.out_features)

    def body(prefix: str) -> tuple[int, int]:
        linear = sum(
            p.numel()
            for n, m in llm.named_modules()
            if n.startswith(prefix) and id(m) not in embeddings and m is not head
            for p in m.parameters(recurse=False)
        )
        return linear, sum(v for n, v in lora_per_linear.items() if n.startswith(prefix))

    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2 + 1
    queries = config.num_query_tokens
    n_head = head.weight.numel()
    flops = {
        "vit": 2 * n_vit * patches,
        "qformer": 6 * n_qformer * queries + 4 * n_kv * patches,
        "projection": 6 * n_projection * queries,
    }
    if config.is_encoder_decoder:
        encoder_tokens, decoder_tokens = queries + lengths["prompt"], lengths["target"]
        (n_enc, lora_enc), (n_dec, lora_dec) = body("encoder."), body("decoder.")
        flops["llm"] = 4 * n_enc * encoder_tokens + 4 * n_dec * decoder_tokens + 4 * n_head * decoder_tokens
        flops["lora"] = 6 * (lora_enc * encoder_tokens + lora_dec * decoder_tokens)
    else:
        tokens = queries + lengths["prompt"] + lengths["target"]
        n_body, lora = body("")
        flops["llm"] = 4 * n_body * tokens + 4 * n_head * (lengths["prompt"] + lengths["target"] + 1)
        flops["lora"] = 6 * lora * tokens
    flops["total"] = sum(flops.values())
    return flops


def step_flops_estimate(flops: dict, gradient_checkpointing: bool, vit_graph: bool) -> float:
    """Hardware FLOPs of one sample's training step, from `train_flops_per_sample`: the model FLOPs, plus the forward
    recomputed under gradient checkpointing (Q-Former: a third of its 6N; LLM: half of its 4N; LoRA: a third), plus,
    when the ViT's output carries an autograd graph, the ViT's backward to its input (about one forward) and, under
    checkpointing, its recomputation (one more). Assumes every FLOP costs the same time: an estimate, not a timing."""
    total = flops["total"]
    if gradient_checkpointing:
        total += flops["qformer"] / 3 + flops["llm"] / 2 + flops["lora"] / 3
    if vit_graph:
        total += flops["vit"] * (2 if gradient_checkpointing else 1)
    return total


def estimated_speedup(flops: dict, gradient_checkpointing: bool) -> float:
    """What avoiding the ViT graph alone should give, at equal efficiency per FLOP: baseline / mBLIP step FLOPs."""
    return step_flops_estimate(flops, gradient_checkpointing, True) / step_flops_estimate(
        flops, gradient_checkpointing, False
    )


def peak_flops(device) -> tuple[float | None, str]:
    """Dense bf16 peak of the GPU (spec sheets), for MFU."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None, "no GPU"
    name = torch.cuda.get_device_name()
    table = [("H100 PCIe", 756e12), ("H100", 989.4e12), ("H200", 989.4e12), ("A100", 312e12), ("L40S", 362e12)]
    for key, value in table:
        if key in name:
            return value, f"{name}: {value / 1e12:.0f} TFLOP/s dense bf16 (spec sheet)"
    return None, f"{name}: peak unknown, pass --peak_tflops"


# ---------------------------------------------------------------------------------------------------- the probe
def _probe_class():
    from transformers import TrainerCallback

    class StepProbe(TrainerCallback):
        """Step boundaries, per-stage forward time (hooks), peak memory over training, losses, and whether the ViT's
        output carried an autograd graph."""

        def __init__(self, device, measure_memory: bool):
            self.device, self.measure_memory = device, measure_memory
            self.step_begin, self.step_end, self.optimizer_begin, self.optimizer_end = [], [], [], []
            self.forward = {}
            self.vit_graph = None
            self.losses = []
            self._peak_context = self._peak = None
            self._hooks, self._start = [], {}

        # ---- hooks on the model's parts, the same names on both sides
        def _attach(self, model):
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            parts = {"vit": base.vision_model, "qformer": base.qformer, "llm": base.language_model, "forward": base}
            for name, module in parts.items():
                self.forward[name] = []
                self._hooks.append(module.register_forward_pre_hook(self._pre(name)))
                self._hooks.append(module.register_forward_hook(self._post(name)))

        def _pre(self, name):
            def hook(module, args):
                if module.training:
                    sync(self.device)
                    self._start[name] = time.perf_counter()

            return hook

        def _post(self, name):
            def hook(module, args, output):
                if module.training and name in self._start:
                    sync(self.device)
                    self.forward[name].append(time.perf_counter() - self._start.pop(name))
                    if name == "vit":
                        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
                        self.vit_graph = bool(hidden.requires_grad)

            return hook

        # ---- Trainer events
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._attach(model)
            if self.measure_memory:
                self._peak_context = peak_memory(self.device)
                self._peak = self._peak_context.__enter__()

        def _stamp(self, times: list[float]):
            """Append the time at which the device has finished its queued work (CUDA kernels run asynchronously)."""
            sync(self.device)
            times.append(time.perf_counter())

        def on_step_begin(self, args, state, control, **kwargs):
            self._stamp(self.step_begin)

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self._stamp(self.optimizer_begin)

        def on_optimizer_step(self, args, state, control, **kwargs):
            self._stamp(self.optimizer_end)

        def on_step_end(self, args, state, control, **kwargs):
            self._stamp(self.step_end)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def on_train_end(self, args, state, control, **kwargs):
            if self._peak_context is not None:
                self._peak_context.__exit__(None, None, None)
            for hook in self._hooks:
                hook.remove()

        def result(self, batch_size: int, warmup_steps: int) -> dict:
            steps = len(self.step_end)
            if steps <= warmup_steps:
                raise ValueError(f"only {steps} steps ran; need more than warmup_steps={warmup_steps}")
            measured = range(warmup_steps, steps)
            seconds = (
                self.step_end[-1] - self.step_end[warmup_steps - 1]
                if warmup_steps
                else (self.step_end[-1] - self.step_begin[0])
            )
            compute = [self.step_end[i] - self.step_begin[i] for i in measured]
            optimizer = [self.optimizer_end[i] - self.optimizer_begin[i] for i in measured]
            forward = {k: statistics.mean(v[i] for i in measured) for k, v in self.forward.items() if len(v) == steps}
            per_step = {
                "step": seconds / len(measured),
                "data": (seconds - sum(compute)) / len(measured),  # collation + image loading, before each step
                "forward": forward.get("forward"),
                "forward_vit": forward.get("vit"),
                "forward_qformer": forward.get("qformer"),
                "forward_llm": forward.get("llm"),
                "optimizer": statistics.mean(optimizer),
            }
            if per_step["forward"] is not None:
                per_step["backward"] = statistics.mean(compute) - per_step["forward"] - per_step["optimizer"]
            # Per-step intervals (data loading included); their median shrugs off a step that another process on
            # this shared machine slowed down, which a total over a few steps does not.
            intervals = [self.step_end[i] - (self.step_end[i - 1] if i else self.step_begin[0]) for i in measured]
            out = {
                "samples_per_s": batch_size / statistics.median(intervals),
                "samples_per_s_total": batch_size * len(measured) / seconds,
                "per_step": per_step,
                "steps": steps,
                "losses": self.losses,
                "vit_output_requires_grad": self.vit_graph,
            }
            if self._peak is not None:
                out["peak_bytes"] = self._peak.bytes
                out["peak_method"] = self._peak.method
            return out

    return StepProbe


CACHED = "mblip_cached"
DEFAULTS = "mblip_defaults"  # train_mblip.py's defaults: the official recipe


# ---------------------------------------------------------------------------------------------------- the two sides
def _common_training_args(spec: dict, output_dir: str) -> dict:
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=spec["batch_size"],
        max_steps=spec["steps"],
        save_strategy="no",
        logging_steps=1,
        report_to=[],
        dataloader_num_workers=0,
        seed=spec["seed"],
        warmup_steps=0,
        weight_decay=0.0,
        lr_scheduler_type="linear",  # the Trainer's default (train_mblip.py's: cosine)
        gradient_checkpointing=spec["gradient_checkpointing"],
        bf16=spec["bf16"],
        disable_tqdm=True,
        remove_unused_columns=False,
    )


def trained_settings(trainer, quantization: str | None, augment: bool, max_length: int | None) -> dict:
    """The settings a side trained with, read back from its Trainer (what BENCHMARKS.md labels each row with)."""
    args = trainer.args
    return {
        "quantization": quantization,
        "bf16": bool(args.bf16),
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "augment": bool(augment),
        "max_length": max_length or None,
        "weight_decay": args.weight_decay,
        "lr_scheduler_type": getattr(args.lr_scheduler_type, "value", str(args.lr_scheduler_type)),
        "warmup_steps": args.warmup_steps,
        "learning_rates": {
            "projection": args.learning_rate,
            "qformer": getattr(args, "qformer_learning_rate", args.learning_rate),
            "lora": getattr(args, "lora_learning_rate", args.learning_rate),
        },
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
    }


def _assets_argv(assets: dict) -> list[str]:
    """train_mblip.py's flags for the starting model and the training data that `prepare` wrote."""
    return [
        "--model_name_or_path",
        assets["mblip"],
        "--train_file",
        assets["train_file"],
        "--image_root",
        assets["image_root"],
    ]


def _defaults_argv(spec: dict, output_dir: str) -> list[str]:
    """train_mblip.py with its defaults (the official recipe): only the data, the run's shape and the setting's LLM
    quantization are given. One optimizer step per batch (the recipe accumulates 16): the probe times optimizer steps,
    and accumulation only makes the optimizer run less often."""
    shape = {
        "output_dir": output_dir,
        "per_device_train_batch_size": spec["batch_size"],
        "max_steps": spec["steps"],
        "gradient_accumulation_steps": 1,
        "save_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "dataloader_num_workers": 0,
        "seed": spec["seed"],
        "disable_tqdm": "true",
    }
    argv = _assets_argv(spec["assets"])
    for key, value in shape.items():
        argv += [f"--{key}", str(value)]
    if spec["quantization"] == "int4":
        argv.append("--load_in_4bit")
    elif spec["quantization"] != "int8":  # 8-bit is the default
        argv += ["--load_in_8bit", "false"]
    return argv


def mblip_side(spec: dict) -> dict:
    """`train_mblip.main`, exactly as a user runs it, with a probe callback: with the baseline's settings, or (spec
    "recipe" "defaults") with train_mblip.py's defaults."""
    from mblip import training as train_mblip

    if spec["measure_memory"]:
        release_freed_memory_eagerly()
    probe = _probe_class()(spec["device"], spec["measure_memory"])
    output_dir = os.path.join(spec["workdir"], f"run-mblip-{time.time_ns()}")
    if spec.get("recipe") == "defaults":
        trainer, _ = train_mblip.main(_defaults_argv(spec, output_dir), callbacks=[probe])
        result = probe.result(spec["batch_size"], spec["warmup_steps"])
        collator = trainer.data_collator
        result["settings"] = trained_settings(
            trainer, spec["quantization"], collator.augment, collator.data_args.max_length
        )
        return result
    args = _common_training_args(spec, output_dir)
    argv = [
        *_assets_argv(spec["assets"]),
        "--lora_r",
        str(LORA["r"]),
        "--lora_alpha",
        str(LORA["lora_alpha"]),
        "--lora_dropout",
        str(LORA["lora_dropout"]),
        "--learning_rate",
        str(LEARNING_RATE),
        "--qformer_learning_rate",
        str(LEARNING_RATE),
        "--lora_learning_rate",
        str(LEARNING_RATE),
    ]
    for key, value in args.items():
        if key in ("report_to", "remove_unused_columns"):
            continue
        if isinstance(value, bool):
            argv += [f"--{key}", str(value).lower()]
        else:
            argv += [f"--{key}", str(value)]
    argv += ["--report_to", "none"]
    # What the baseline does too, where train_mblip.py's defaults (the official recipe) differ: one optimizer step per
    # batch, no augmentation, no token limit of our own, and the LLM quantized only when the spec says so.
    argv += ["--gradient_accumulation_steps", "1", "--max_length", "0", "--load_in_8bit", "false"]
    if not spec.get("image_features_cache"):
        argv += ["--augment", "false"]
    if spec.get("image_features_cache"):
        # Built by this side's first run (before training starts, so outside the timed steps) and reused after.
        argv += ["--image_features_cache", spec["image_features_cache"]]
    if spec["quantization"] in ("int8", "int4"):
        argv.append("--load_in_8bit" if spec["quantization"] == "int8" else "--load_in_4bit")
    trainer, _ = train_mblip.main(argv, callbacks=[probe])
    result = probe.result(spec["batch_size"], spec["warmup_steps"])
    result["settings"] = trained_settings(trainer, spec["quantization"], trainer.data_collator.augment, None)
    return result


class Blip2Collator:
    """The baseline's data collator: what a user writes for Blip2Processor-style inputs, with the loss on the target
    only and the same token ids as MBlipProcessor (prompt with the tokenizer's special tokens, target + EOS)."""

    def __init__(self, processor, image_root: str, is_encoder_decoder: bool, num_query_tokens: int):
        self.processor, self.image_root = processor, image_root
        self.is_encoder_decoder, self.num_query_tokens = is_encoder_decoder, num_query_tokens
        self.image_token_id = processor.tokenizer.convert_tokens_to_ids("<image>")

    @staticmethod
    def _pad(rows, value, left):
        width = max(len(r) for r in rows)
        return torch.tensor([[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows])

    def __call__(self, rows):
        from PIL import Image

        images = []
        for row in rows:
            # The peer's own loading, as its users write it (not mblip.images): the bench's generated images carry no
            # EXIF orientation and are RGB, so both sides decode the same pixels at the same cost.
            with Image.open(os.path.join(self.image_root, row["image_id"])) as image:
                images.append(image.convert("RGB"))
        pixel_values = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        tokenizer = self.processor.tokenizer
        prompts = tokenizer([r["context"] for r in rows])["input_ids"]
        placeholders = [self.image_token_id] * self.num_query_tokens
        if self.is_encoder_decoder:
            targets = tokenizer([r["label"] for r in rows])["input_ids"]
            sequences = [placeholders + p for p in prompts]
            return {
                "pixel_values": pixel_values,
                "input_ids": self._pad(sequences, tokenizer.pad_token_id, False),
                "attention_mask": self._pad([[1] * len(s) for s in sequences], 0, False),
                "labels": self._pad(targets, -100, False),
            }
        eos = tokenizer.eos_token_id
        targets = [t + [eos] for t in tokenizer([r["label"] for r in rows], add_special_tokens=False)["input_ids"]]
        sequences = [placeholders + p + t for p, t in zip(prompts, targets)]
        labels = [[-100] * (len(placeholders) + len(p)) + t for p, t in zip(prompts, targets)]
        return {
            "pixel_values": pixel_values,
            "input_ids": self._pad(sequences, tokenizer.pad_token_id, True),
            "attention_mask": self._pad([[1] * len(s) for s in sequences], 0, True),
            "labels": self._pad(labels, -100, True),
        }


def baseline_model(spec: dict):
    """The baseline's model: Blip2ForConditionalGeneration + peft LoRA, the peft docs' way."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, Blip2ForConditionalGeneration

    quantization = None
    if spec["quantization"] in ("int8", "int4"):
        # The vision stack stays un-quantized, or the Q-Former could not train.
        skip = ["vision_model", "qformer", "language_projection", "lm_head"]
        quantization = (
            BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
            if spec["quantization"] == "int8"
            else (
                BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=torch.bfloat16 if spec["bf16"] else torch.float32,
                    llm_int8_skip_modules=skip,
                )
            )
        )
    device_map = {"": 0} if quantization is not None and torch.cuda.is_available() else None
    model = Blip2ForConditionalGeneration.from_pretrained(
        spec["assets"]["blip2"], dtype=torch.float32, quantization_config=quantization, device_map=device_map
    )
    if quantization is not None:
        kwargs = (
            {} if spec["baseline_gc_kwargs"] is None else {"gradient_checkpointing_kwargs": spec["baseline_gc_kwargs"]}
        )
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=spec["gradient_checkpointing"], **kwargs
        )
    head = model.language_model.get_output_embeddings()
    names = sorted(
        {
            n.rsplit(".", 1)[-1]
            for n, m in model.language_model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head
        }
    )
    lora = LoraConfig(target_modules=r"language_model\..*\.(?:" + "|".join(names) + ")", bias="none", **LORA)
    model = get_peft_model(model, lora)
    for name, param in model.named_parameters():
        if any(part in name for part in ("qformer.", "query_tokens", "language_projection.")):
            param.requires_grad_(True)
    return model


def blip2_side(spec: dict) -> dict:
    """The baseline: Blip2ForConditionalGeneration + peft LoRA + Trainer, the peft docs' way."""
    import datasets
    from transformers import Blip2Processor, Trainer, TrainingArguments, set_seed

    if spec["measure_memory"]:
        release_freed_memory_eagerly()
    set_seed(spec["seed"])
    path = spec["assets"]["blip2"]
    model = baseline_model(spec)

    processor = Blip2Processor.from_pretrained(path)
    dataset = datasets.load_dataset("json", data_files=spec["assets"]["train_file"], split="train")
    collator = Blip2Collator(
        processor,
        spec["assets"]["image_root"],
        model.config.text_config.is_encoder_decoder,
        model.config.num_query_tokens,
    )
    args = _common_training_args(spec, os.path.join(spec["workdir"], f"run-blip2-{time.time_ns()}"))
    args["learning_rate"] = LEARNING_RATE
    if spec["gradient_checkpointing"] and spec["baseline_gc_kwargs"] is not None:
        args["gradient_checkpointing_kwargs"] = spec["baseline_gc_kwargs"]
    probe = _probe_class()(spec["device"], spec["measure_memory"])
    trainer = Trainer(
        model=model, args=TrainingArguments(**args), train_dataset=dataset, data_collator=collator, callbacks=[probe]
    )
    trainer.train()
    result = probe.result(spec["batch_size"], spec["warmup_steps"])
    result["settings"] = trained_settings(trainer, spec["quantization"], False, None)
    return result


SIDES = {"mblip": mblip_side, "blip2": blip2_side}


def step_ab(spec: dict, sides: dict, rounds: int, rows: int) -> dict:
    """Forward + backward of each side's model on the same rows, in one process, alternating `rounds` times.

    The Trainer runs above include process start-up noise between the sides; here the sides take turns step by step,
    so the ratio shows what the model code and its set-up (hooks, checkpointing, logits) cost, with far less noise.
    The mBLIP side is built by train_mblip.py's own `load_model`; each baseline by `baseline_model`. Checkpointing is
    switched on as the Trainer does (non-reentrant by default; train_mblip.py passes use_reentrant=False too).
    """
    from transformers import TrainingArguments, set_seed

    from mblip import training as train_mblip

    from .common import alternate

    set_seed(spec["seed"])
    data = [json.loads(line) for line in open(spec["assets"]["train_file"], encoding="utf-8")][:rows]
    model_args = train_mblip.ModelArguments(
        model_name_or_path=spec["assets"]["mblip"],
        load_in_8bit=spec["quantization"] == "int8",
        load_in_4bit=spec["quantization"] == "int4",
        lora_r=LORA["r"],
        lora_alpha=LORA["lora_alpha"],
        lora_dropout=LORA["lora_dropout"],
    )
    data_args = train_mblip.DataArguments(
        train_file=spec["assets"]["train_file"], image_root=spec["assets"]["image_root"]
    )
    args = TrainingArguments(output_dir=os.path.join(spec["workdir"], "step-ab"), bf16=spec["bf16"], report_to=[])
    models, batches = {}, {}
    for name, side_spec in sides.items():
        if name == "mblip":
            model, processor, _ = train_mblip.load_model(model_args, args, spec["assets"]["mblip"])
            kwargs = {"use_reentrant": False}
            batch = train_mblip.MBlipCollator(processor, data_args)(data)
        else:
            from transformers import Blip2Processor

            model = baseline_model(side_spec)
            kwargs = side_spec["baseline_gc_kwargs"]
            processor = Blip2Processor.from_pretrained(spec["assets"]["blip2"])
            config = model.config
            batch = Blip2Collator(
                processor, spec["assets"]["image_root"], config.text_config.is_encoder_decoder, config.num_query_tokens
            )(data)
        if spec["gradient_checkpointing"]:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.train()
        device = next(p for p in model.parameters() if p.device.type != "meta").device
        models[name], batches[name] = model, {k: v.to(device) for k, v in batch.items()}

    def step(name):
        def run():
            loss = models[name](**batches[name]).loss
            loss.backward()
            models[name].zero_grad(set_to_none=True)
            return float(loss)

        return run

    losses = {name: step(name)() for name in models}  # warm-up, and the losses must agree
    times = alternate({name: step(name) for name in models}, rounds, spec["device"])
    out = {
        "rounds": rounds,
        "rows": rows,
        "losses": losses,
        "seconds": {name: summary(values) for name, values in times.items()},
    }
    out["speedup_of_mblip"] = {name: paired_ratio(times[name], times["mblip"]) for name in models if name != "mblip"}
    return out


# ---------------------------------------------------------------------------------------------------- the comparison
def default_configs(device) -> list[dict]:
    """What runs by default. CPU: fp32 without gradient checkpointing, and the paper's setting (8-bit LLM, gradient
    checkpointing). GPU: the paper's setting in bf16 mixed precision, with an 8-bit and a 4-bit LLM. A setting names
    what the baseline and the like-for-like mBLIP run use; the defaults run (`DEFAULTS`) takes only its quantization.

    With a quantized LLM the baseline follows peft's documented recipe, `prepare_model_for_kbit_training(model)`,
    whose default (reentrant checkpointing) hooks every input embedding of the model, the ViT's included. A second
    baseline passes `gradient_checkpointing_kwargs={"use_reentrant": False}`, which skips that hook: it tells whether
    a gap comes from that hook or from anything else.
    """
    careful = {"blip2_nonreentrant": {"baseline_gc_kwargs": {"use_reentrant": False}}}
    # The 8-bit setting (and fp32 on CPU) also runs train_mblip.py --image_features_cache (side "mblip_cached"): the
    # frozen ViT's outputs computed once, so that no step runs the ViT.
    if torch.device(device).type == "cuda":
        return [
            {
                "name": "int8+gc",
                "quantization": "int8",
                "gradient_checkpointing": True,
                "bf16": True,
                "extra_baselines": careful,
                "cached_variant": True,
            },
            {
                "name": "int4+gc",
                "quantization": "int4",
                "gradient_checkpointing": True,
                "bf16": True,
                "extra_baselines": careful,
            },
        ]
    return [
        {"name": "fp32", "quantization": None, "gradient_checkpointing": False, "bf16": False, "cached_variant": True},
        {
            "name": "int8+gc",
            "quantization": "int8",
            "gradient_checkpointing": True,
            "bf16": False,
            "extra_baselines": careful,
            "cached_variant": True,
        },
    ]


def run(
    families=("mt5", "bloom"),
    size="cpu",
    configs: list[dict] | None = None,
    repeats=3,
    steps=8,
    warmup_steps=2,
    batch_size=4,
    memory_steps=3,
    step_rounds=12,
    device="cpu",
    rows: int | None = None,
    workdir: str | None = None,
    peak_tflops: float | None = None,
    seed=0,
) -> dict:
    """For each family and configuration: every side timed in `repeats` fresh processes, in rotating order, then a
    model-only step A/B in one process (`step_rounds` rounds), then one memory run each; samples/s, peak memory above
    the loaded model, where a step's time goes, model FLOPs and MFU."""
    device = torch.device(device)
    configs = configs or default_configs(device)
    peak, peak_source = (peak_tflops * 1e12, "--peak_tflops") if peak_tflops else peak_flops(device)
    results = {
        "setup": {
            "size": size,
            "device": str(device),
            "repeats": repeats,
            "steps": steps,
            "warmup_steps": warmup_steps,
            "batch_size": batch_size,
            "memory_steps": memory_steps,
            "step_rounds": step_rounds,
            "lora": LORA,
            "learning_rate": LEARNING_RATE,
            "peak_flops": peak,
            "peak_flops_source": peak_source,
            "threads": torch.get_num_threads(),
        },
        "families": {},
    }
    rows = rows or batch_size * steps
    with tempfile.TemporaryDirectory(prefix="mblip-bench-", dir=workdir) as tmp:
        for family in families:
            assets = in_child(prepare, family, size, Path(tmp) / family, rows, str(device), seed)
            from mblip.configuration_mblip import MBlipConfig

            config = MBlipConfig.from_pretrained(assets["mblip"])
            lengths = token_lengths(assets)
            flops = train_flops_per_sample(config, lengths)
            entry = {
                "llm": config.text_config.model_type,
                "token_lengths": lengths,
                "flops_per_sample": flops,
                "configs": {},
            }
            for cfg in configs:
                spec = {
                    "assets": assets,
                    "workdir": str(Path(tmp) / family),
                    "device": str(device),
                    "seed": seed,
                    "batch_size": batch_size,
                    "steps": steps,
                    "warmup_steps": warmup_steps,
                    "quantization": cfg.get("quantization"),
                    "gradient_checkpointing": cfg["gradient_checkpointing"],
                    "bf16": cfg.get("bf16", False),
                    "baseline_gc_kwargs": None,
                    "measure_memory": False,
                }
                sides = {
                    DEFAULTS: (mblip_side, {**spec, "recipe": "defaults"}),
                    "mblip": (mblip_side, spec),
                    "blip2": (blip2_side, spec),
                }
                if cfg.get("cached_variant"):
                    cache = str(Path(tmp) / family / f"features-{cfg['name']}")
                    sides[CACHED] = (mblip_side, {**spec, "image_features_cache": cache})
                for name, overrides in cfg.get("extra_baselines", {}).items():
                    sides[name] = (blip2_side, {**spec, **overrides})
                names = list(sides)
                runs = {name: [] for name in names}
                for index in range(repeats):
                    # Rotate the order every round, so that no side always runs first or after the same one.
                    for name in names[index % len(names) :] + names[: index % len(names)]:
                        function, side_spec = sides[name]
                        runs[name].append(in_child(function, side_spec))
                ab = None
                if step_rounds:
                    ab = in_child(
                        step_ab,
                        spec,
                        # The model code only: the variants differ from "mblip" in data, optimizer or cache.
                        {name: side_spec for name, (_, side_spec) in sides.items() if name not in (CACHED, DEFAULTS)},
                        step_rounds,
                        batch_size,
                    )
                memory = {}
                if memory_steps:
                    for name, (function, side_spec) in sides.items():
                        memory_spec = {**side_spec, "measure_memory": True, "steps": memory_steps, "warmup_steps": 1}
                        memory[name] = in_child(function, memory_spec)
                entry["configs"][cfg["name"]] = summarise(cfg, runs, memory, flops["total"], peak)
                entry["configs"][cfg["name"]]["step_ab"] = ab
            results["families"][family] = entry
    return results


def summarise(cfg: dict, runs: dict, memory: dict, flops_per_sample: float, peak: float | None) -> dict:
    out = {
        "config": {k: v for k, v in cfg.items() if k != "extra_baselines"},
        "baselines": [name for name in runs if not name.startswith("mblip")],
        "sides": {},
    }
    for side, side_runs in runs.items():
        rates = [r["samples_per_s"] for r in side_runs]
        per_step = {
            k: statistics.median(r["per_step"][k] for r in side_runs)
            for k in side_runs[0]["per_step"]
            if side_runs[0]["per_step"][k] is not None
        }
        row = {
            "samples_per_s": summary(rates),
            "per_step_median_s": per_step,
            "first_loss": side_runs[0]["losses"][0] if side_runs[0]["losses"] else None,
            "vit_output_requires_grad": side_runs[0]["vit_output_requires_grad"],
            "settings": side_runs[0].get("settings"),
            "model_tflops_per_s": statistics.median(rates) * flops_per_sample / 1e12,
        }
        if peak:
            row["mfu"] = statistics.median(rates) * flops_per_sample / peak
        if memory.get(side):
            row["peak_bytes"] = memory[side].get("peak_bytes")
            row["peak_mib"] = mib(memory[side].get("peak_bytes"))
            row["peak_method"] = memory[side].get("peak_method")
        out["sides"][side] = row
    mblip = out["sides"]["mblip"]
    for name in out["baselines"]:
        # The i-th runs of the sides ran back to back (rotating order), so their ratio saw similar load.
        other = out["sides"][name]
        other["speedup_of_mblip"] = paired_ratio(
            [r["samples_per_s"] for r in runs["mblip"]], [r["samples_per_s"] for r in runs[name]]
        )
        if mblip.get("peak_bytes") and other.get("peak_bytes"):
            other["memory_ratio_of_mblip"] = mblip["peak_bytes"] / other["peak_bytes"]
        if mblip["first_loss"] is not None and other["first_loss"] is not None:
            # Same weights, data and settings: the first step's loss must agree (a check of the comparison itself).
            other["first_loss_difference"] = abs(mblip["first_loss"] - other["first_loss"])
    for variant in (CACHED, DEFAULTS):
        if variant not in out["sides"]:
            continue
        row = out["sides"][variant]
        # Ratios of the variant's run over each other side (the plain mBLIP run included), round by round.
        row["speedup_vs"] = {
            name: paired_ratio([r["samples_per_s"] for r in runs[variant]], [r["samples_per_s"] for r in runs[name]])
            for name in runs
            if name != variant
        }
        row["memory_ratio_vs"] = {
            name: row["peak_bytes"] / side["peak_bytes"]
            for name, side in out["sides"].items()
            if name != variant and row.get("peak_bytes") and side.get("peak_bytes")
        }
        # The cached run trains the same steps as from pixels; the recipe's augmentation crops other images.
        if variant == CACHED and row["first_loss"] is not None and mblip["first_loss"] is not None:
            row["first_loss_difference"] = abs(row["first_loss"] - mblip["first_loss"])
    return out


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["mt5", "bloom"])
    parser.add_argument("--size", default="cpu", choices=["tiny", "cpu", "full"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from .common import require_device

    require_device(args.device)
    print(
        json.dumps(
            run(args.families, args.size, repeats=args.repeats, steps=args.steps, device=args.device),
            indent=1,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
