"""The two models mBLIP starts from, made here in miniature: an English BLIP-2 and a multilingual LLM.

- `train_english_blip2`: ViT + Q-Former + a small English Llama-style LM, all trained together on English captions
  and questions about the demo's scenes, then saved in transformers' BLIP-2 format (`Blip2ForConditionalGeneration`),
  the format of the `Salesforce/blip2-*` checkpoints that the paper starts from.
- `train_multilingual_lm`: a small BLOOM-style decoder (BLOOMZ is one of the paper's two LLMs) trained on text only,
  in all eight languages, with a byte-level BPE tokenizer trained on the same text.

Both write ordinary transformers folders, which train_mblip.py then assembles with convert_mblip.from_parts.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    BlipImageProcessor,
    BloomConfig,
    BloomForCausalLM,
    LlamaConfig,
    PreTrainedTokenizerFast,
    get_cosine_schedule_with_warmup,
)
from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig, Blip2VisionConfig

from mblip.cards import model_card
from mblip.configuration_mblip import MBlipConfig
from mblip.hub import save_model_repository
from mblip.images import open_image
from mblip.modeling_mblip import MBlipForConditionalGeneration
from mblip.outputs import atomic_write_json
from mblip.processing_mblip import MBlipProcessor

from . import tiny
from .tiny import PAD
from .world import COLOURS, IMAGE_SIZE, POSITIONS, SHAPES, Scene, image_name


logger = logging.getLogger("demo")

NUM_QUERY_TOKENS = 8


@dataclass
class Schedule:
    steps: int
    batch_size: int
    learning_rate: float
    log_every: int = 10


# ================================================================================================ parts
# Han characters and CJK punctuation, each its own pre-token (as most multilingual tokenizers treat Chinese); else a
# word with its leading space. GPT-2's byte-level regex would instead cut Bengali words at every vowel sign (they
# are marks, not letters) and leave whole Chinese clauses, unsplit, to become single tokens.
_CJK = "\u3000-\u303f\u4e00-\u9fff\uff00-\uffef"
PRE_TOKENS = rf"[{_CJK}]| ?[^\s{_CJK}]+|\s+"


def train_tokenizer(texts: list[str], vocab_size: int, family: str) -> PreTrainedTokenizerFast:
    """demo/tiny.py's byte-level BPE recipe on the demo's own text, with the pre-tokenization above: <pad>=0 </s>=1
    <s>=2 <unk>=3; Llama's tokenizer prepends <s>, BLOOM's adds nothing."""
    from tokenizers import Regex, pre_tokenizers

    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRE_TOKENS), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return tiny.bpe_tokenizer(texts, vocab_size, family, pre_tokenizer)


def vision_config() -> Blip2VisionConfig:
    # 48 px images in 16 px patches: each slot of a scene is one patch (see world.SLOT_CENTRES). BLIP-2's default
    # initializer_range (1e-10) suits loading released weights, not training from scratch: the ViT would start as a
    # constant function that captioning gradients hardly move.
    return tiny.vit_config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=16,
        initializer_range=0.02,
    )


def qformer_config() -> Blip2QFormerConfig:
    # A larger initializer_range than BLIP-2's 0.02 makes the queries' cross-attention to the patches selective from
    # the start; measured here, representation learning then converges in about half the steps.
    return tiny.qformer_config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        cross_attention_frequency=1,
        vocab_size=64,
        max_position_embeddings=64,
        initializer_range=0.1,
    )


def image_processor() -> BlipImageProcessor:
    return tiny.square_image_processor(IMAGE_SIZE)


def english_lm_config(vocab_size: int, hidden_size: int = 128) -> LlamaConfig:
    return tiny.llm_config(
        "llama",
        vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )


def multilingual_lm_config(vocab_size: int) -> BloomConfig:
    # A hidden size that is a multiple of 64 keeps bitsandbytes' blockwise quantization exact on whole blocks.
    return tiny.llm_config("bloom", vocab_size, hidden_size=128, n_layer=3, n_head=4)


# ================================================================================================ training loop
def batches(n_rows: int, schedule: Schedule, seed: int):
    """Index batches for `schedule.steps` steps: shuffled epochs, deterministic in the seed."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(schedule.steps):
        while len(order) < schedule.batch_size:
            epoch = list(range(n_rows))
            rng.shuffle(epoch)
            order += epoch
        yield order[: schedule.batch_size]
        del order[: schedule.batch_size]


def fit(model, parameters, loss_of, n_rows: int, schedule: Schedule, seed: int, what: str) -> list[dict]:
    """AdamW with warm-up and cosine decay over `parameters`; `loss_of(batch_indices)` gives a batch's loss.
    Returns the logged losses."""
    torch.manual_seed(seed)
    model.train()
    parameters = [p for p in parameters if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=schedule.learning_rate, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, schedule.steps // 20), schedule.steps)
    history, running, start = [], [], time.perf_counter()
    for step, index in enumerate(batches(n_rows, schedule, seed), start=1):
        loss = loss_of(index)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running.append(loss.item())
        if step % schedule.log_every == 0 or step == schedule.steps:
            history.append({"step": step, "loss": sum(running) / len(running)})
            running = []
            if step % (schedule.log_every * 10) == 0 or step == schedule.steps:
                logger.info(
                    "%s: step %d/%d, loss %.3f (%.0fs)",
                    what,
                    step,
                    schedule.steps,
                    history[-1]["loss"],
                    time.perf_counter() - start,
                )
    model.eval()
    return history


def pixel_cache(processor: MBlipProcessor, image_paths: list[Path]) -> dict[Path, torch.Tensor]:
    """Every image preprocessed once: the scenes are few and small, and the loop then never touches the disk."""
    unique = sorted(set(image_paths))
    pixels = []
    for start in range(0, len(unique), 256):
        images = [open_image(path).convert("RGB") for path in unique[start : start + 256]]
        pixels.append(processor.image_processor(images, return_tensors="pt")["pixel_values"])
    return dict(zip(unique, torch.cat(pixels)))


# ================================================================================================ stage 1
N_SLOT_CLASSES = 1 + len(COLOURS) * len(SHAPES)  # empty, or one colour-shape pair


def layout_labels(scene: Scene) -> list[int]:
    """What each slot holds, as a class: 0 for nothing, else 1 + colour index * 3 + shape index."""
    labels = []
    for position in POSITIONS:
        thing = scene.at(position)
        labels.append(
            0 if thing is None else 1 + list(COLOURS).index(thing.colour) * len(SHAPES) + SHAPES.index(thing.shape)
        )
    return labels


def learn_representations(model, scenes: list[Scene], pixels: torch.Tensor, schedule: Schedule, seed: int):
    """BLIP-2's first stage, in miniature: the ViT, queries and Q-Former learn to extract what the text will talk
    about, before any LM is attached. BLIP-2 does this with three image-text objectives over web captions; here a
    stand-in does it in seconds: a linear head over the query outputs predicts what each slot of the scene holds
    (the world's own layout, i.e. the content of its English caption). The head is thrown away afterwards."""
    torch.manual_seed(seed)
    width, n_queries = model.config.qformer_config.hidden_size, model.config.num_query_tokens
    head = torch.nn.Linear(n_queries * width, len(POSITIONS) * N_SLOT_CLASSES)
    labels = torch.tensor([layout_labels(scene) for scene in scenes])

    def loss_of(index):
        queries = model.query_tokens.expand(len(index), -1, -1)
        patches = model.vision_model(pixel_values=pixels[index]).last_hidden_state
        output = model.qformer(query_embeds=queries, encoder_hidden_states=patches).last_hidden_state
        logits = head(output.flatten(1)).view(len(index) * len(POSITIONS), N_SLOT_CLASSES)
        return torch.nn.functional.cross_entropy(logits, labels[index].flatten())

    vision_stack = [*model.vision_model.parameters(), model.query_tokens, *model.qformer.parameters()]
    return fit(
        model,
        vision_stack + list(head.parameters()),
        loss_of,
        len(scenes),
        schedule,
        seed,
        "English BLIP-2, stage 1 (representation learning)",
    )


def train_english_blip2(
    scenes: list[Scene],
    rows: list[dict],
    image_root: Path,
    output_dir: Path,
    representation: Schedule,
    generative: Schedule,
    seed: int,
) -> dict[str, list[dict]]:
    """The English BLIP-2, trained in BLIP-2's two stages and saved in BLIP-2 format.

    1. representation learning: ViT, queries and Q-Former (see `learn_representations`);
    2. generative learning: the queries, through a linear projection, become the soft prompt of an English LM that
       learns to caption and answer in English. BLIP-2 keeps its image encoder frozen here, and so does the demo;
       unlike BLIP-2, whose LLM was pre-trained and frozen, the tiny English LM learns from scratch in this stage.
    Returns the loss history of each stage.
    """
    from mblip.convert import to_blip2

    tokenizer = train_tokenizer([r["context"] for r in rows] + [r["label"] for r in rows], 400, "llama")
    config = MBlipConfig(
        vision_config=vision_config(),
        qformer_config=qformer_config(),
        text_config=english_lm_config(len(tokenizer)),
        num_query_tokens=NUM_QUERY_TOKENS,
    )
    processor = MBlipProcessor.for_model_config(config, image_processor(), tokenizer)
    torch.manual_seed(seed)
    model = MBlipForConditionalGeneration(config)
    with torch.no_grad():
        model.query_tokens.normal_(0.0, config.qformer_config.initializer_range)
    cache = pixel_cache(processor, [image_root / image_name(scene) for scene in scenes])
    pixels = torch.stack([cache[image_root / image_name(scene)] for scene in scenes])
    history = {"representation": learn_representations(model, scenes, pixels, representation, seed)}

    model.vision_model.requires_grad_(False)

    def loss_of(index):
        picked = [rows[i] for i in index]
        inputs = processor(text=[r["context"] for r in picked], text_target=[r["label"] for r in picked])
        inputs["pixel_values"] = torch.stack([cache[image_root / r["image_id"]] for r in picked])
        return model(**inputs).loss

    history["generative"] = fit(
        model, model.parameters(), loss_of, len(rows), generative, seed, "English BLIP-2, stage 2 (generative learning)"
    )
    # Written as an mBLIP repository first, then exported by the toolkit's own converter, so the BLIP-2 folder is
    # exactly what `convert_mblip.py --to_blip2` produces (image placeholder token, num_query_tokens, processor).
    staging = output_dir.with_name(output_dir.name + ".mblip-format")
    card = model_card("English BLIP-2 (demo)", "Trained by demo/pretrain.py on the demo's English scenes.", [])
    save_model_repository(model.requires_grad_(True), processor, staging, card, overwrite=True)
    to_blip2(str(staging), str(output_dir), overwrite=True)
    shutil.rmtree(staging)
    return history


# ================================================================================================ stage 2
def encode_text_rows(tokenizer, rows: list[dict]) -> list[list[int]]:
    """Prompt and target tokenized apart and joined with EOS, exactly as MBlipProcessor builds decoder-only training
    inputs, so the LLM sees the token boundaries it will see later."""
    prompts = tokenizer([r["context"] for r in rows], add_special_tokens=True)["input_ids"]
    targets = tokenizer([r["label"] for r in rows], add_special_tokens=False)["input_ids"]
    return [p + t + [tokenizer.eos_token_id] for p, t in zip(prompts, targets)]


def train_multilingual_lm(rows: list[dict], output_dir: Path, schedule: Schedule, seed: int, vocab_size: int = 1500):
    """A BLOOM-style LM trained from scratch on text only (every token is predicted, as in LM pre-training).
    Saved with its tokenizer as a plain `AutoModelForCausalLM` folder. Returns the loss history."""
    texts = [r["context"] for r in rows] + [r["label"] for r in rows]
    tokenizer = train_tokenizer(texts, vocab_size, "bloom")
    sequences = encode_text_rows(tokenizer, rows)
    torch.manual_seed(seed)
    model = BloomForCausalLM(multilingual_lm_config(len(tokenizer)))

    def make_inputs(index):
        picked = [sequences[i] for i in index]
        width = max(len(s) for s in picked)
        input_ids = torch.full((len(picked), width), PAD, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, seq in enumerate(picked):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": input_ids.masked_fill(mask == 0, -100)}

    def loss_of(index):
        return model(**make_inputs(index)).loss

    history = fit(model, model.parameters(), loss_of, len(sequences), schedule, seed, "multilingual LM")
    staging = output_dir.with_name(output_dir.name + ".incomplete")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    staging.rename(output_dir)
    return history


def save_history(history: list[dict] | dict[str, list[dict]], path: Path, seconds: float) -> None:
    atomic_write_json(path, {"seconds": seconds, "log_history": history})
