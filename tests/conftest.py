"""Shared fixtures. The root model files are imported as the package `mblip` (see mblip/__init__.py), so their
relative imports resolve exactly as they do when the Hub loader imports them from a model repository."""

import os

import pytest
import torch

# Nothing may be downloaded: make any accidental hub access fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from demo.tiny import FAMILIES, IMAGE_SIZE, tiny_config, tiny_processor  # noqa: E402
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


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param
