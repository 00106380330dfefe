"""Shared fixtures. The root model files are imported as the package `mblip` (see mblip/__init__.py), so their
relative imports resolve exactly as they do when the Hub loader imports them from a model repository."""

import os

import pytest
import torch


# Nothing may be downloaded: make any accidental hub access fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from mblip.demo.tiny import FAMILIES, IMAGE_SIZE, tiny_config, tiny_processor, tiny_text_config  # noqa: E402
from mblip.modeling_mblip import MBlipForConditionalGeneration  # noqa: E402


PROMPTS = ["Caption the image in German.", "zwei", "Question: how many circles are there? Short answer in English:"]
TARGETS = ["ein roter Kreis über einem blauen Quadrat", "two", "deux triangles verts"]


def build(family: str, seed: int = 0):
    """A tiny random mBLIP model (eval mode) and its processor."""
    processor = tiny_processor(family)
    config = tiny_config(family, len(processor.tokenizer))
    torch.manual_seed(seed)
    model = MBlipForConditionalGeneration(config).eval()
    # Random query tokens, so that the Q-Former's output depends on them.
    with torch.no_grad():
        model.query_tokens.normal_(0, 1.0)
    return model, processor


def random_pixels(batch: int, seed: int = 1, n_images: int | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, IMAGE_SIZE, IMAGE_SIZE) if n_images is None else (batch, n_images, 3, IMAGE_SIZE, IMAGE_SIZE)
    return torch.randn(shape, generator=generator)


def make_blip2(family, path, seed=0):
    """A tiny transformers-5 BLIP-2 checkpoint (image placeholder token, num_query_tokens) with its processor."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor

    model, processor = build(family)
    tokenizer = processor.tokenizer
    blip2_processor = Blip2Processor(
        processor.image_processor, tokenizer, num_query_tokens=model.config.num_query_tokens
    )
    config = Blip2Config(
        vision_config=model.config.vision_config.to_dict(),
        qformer_config=model.config.qformer_config.to_dict(),
        text_config={**model.config.text_config.to_dict(), "vocab_size": len(tokenizer)},
        num_query_tokens=model.config.num_query_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    blip2 = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        blip2.query_tokens.normal_()
    blip2.save_pretrained(path)
    blip2_processor.save_pretrained(path)
    return blip2, blip2_processor


def save_llm(family, path, seed=5):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    tokenizer = tiny_processor(family).tokenizer
    config = tiny_text_config(family, len(tokenizer))
    torch.manual_seed(seed)
    llm = (AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM).from_config(config)
    llm.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return llm, tokenizer


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param
