# Copyright 2026 The mBLIP toolkit authors. Licensed under the Apache License, Version 2.0.
"""mBLIP processor: BLIP's image processor + the LLM's tokenizer, producing the model's input contract."""

import torch

from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import is_numpy_array, is_vision_available, logging


if is_vision_available():
    import PIL.Image

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100
# PIL modes whose samples exceed 8 bits; PIL's own convert("RGB") would clip them to white.
_HIGH_BIT_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


def _high_bit_depth_to_8bit(image) -> "PIL.Image.Image":
    high = image.getextrema()[1]
    if image.mode == "F":
        # Float images are taken to be in [0, 1] when they fit, else in [0, 255].
        scale = 255.0 if high <= 1.0 else 1.0
        return image.point(lambda v: v * scale).convert("L")
    if image.mode.startswith("I;16") or high > 255:
        return image.convert("I").point(lambda v: v * (1 / 257)).convert("L")  # the 16-bit range onto 8 bits
    return image.convert("L")


def _tensor_to_rgb(image: torch.Tensor, what: str) -> "PIL.Image.Image":
    """An image tensor or array, (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4, as an RGB PIL image."""
    if image.ndim == 2:
        image = image.unsqueeze(-1)
    if image.ndim != 3:
        raise ValueError(f"{what} must be (H, W), (H, W, C) or (C, H, W), got shape {tuple(image.shape)}")
    if image.shape[-1] not in (1, 3, 4) and image.shape[0] in (1, 3, 4):
        image = image.permute(1, 2, 0)
    if image.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"{what} has shape {tuple(image.shape)}: expected 1 (grey), 3 (RGB) or 4 (RGBA) channels"
        )
    if image.dtype == torch.bool:
        image = image.to(torch.uint8) * 255
    elif image.is_floating_point():
        # Floats in [0, 1] are the common convention (torchvision's ToTensor); larger values are taken as 0-255.
        scale = 255.0 if image.numel() and float(image.max()) <= 1.0 else 1.0
        image = (image.float() * scale).round().clamp(0, 255).to(torch.uint8)
    elif image.dtype != torch.uint8:
        image = image.long()
        image = (image.float() / 257.0 if image.numel() and int(image.max()) > 255 else image.float())
        image = image.round().clamp(0, 255).to(torch.uint8)
    if image.shape[-1] == 1:
        image = image.expand(-1, -1, 3)
    elif image.shape[-1] == 4:
        # Composite transparency onto white, as for PIL images.
        alpha = image[..., 3:4].float() / 255.0
        image = (image[..., :3].float() * alpha + 255.0 * (1.0 - alpha)).round().to(torch.uint8)
    return PIL.Image.fromarray(image.contiguous().numpy(), mode="RGB")


def to_rgb(image, index: int = 0) -> "PIL.Image.Image":
    """Any PIL mode (RGB, RGBA, L, LA, P, CMYK, 1, I;16, I, F), numpy array or tensor -> an RGB PIL image."""
    what = f"image {index}"
    if isinstance(image, PIL.Image.Image):
        if image.mode in _HIGH_BIT_DEPTH_MODES:
            image = _high_bit_depth_to_8bit(image)
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            image = image.convert("RGBA")
            background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
            return PIL.Image.alpha_composite(background, image).convert("RGB")
        return image.convert("RGB")
    if is_numpy_array(image):
        image = torch.as_tensor(image)
    if isinstance(image, torch.Tensor):
        return _tensor_to_rgb(image.detach().cpu(), what)
    raise ValueError(f"{what} is a {type(image).__name__}; expected a PIL image, a numpy array or a torch tensor")


class MBlipProcessor(ProcessorMixin):
    r"""
    Wraps BLIP's image processor and the LLM's tokenizer into the input contract of `MBlipForConditionalGeneration`.

    Args:
        image_processor (`BlipImageProcessor`): resizes to the ViT's size and normalises.
        tokenizer: the language model's tokenizer.
        is_encoder_decoder (`bool`): the LLM family this processor serves; saved with it, never guessed.
            Use `MBlipProcessor.for_model_config(config, ...)` to take it from an `MBlipConfig`.
        max_length (`int`, *optional*): the most tokens a prompt (and, separately, a target) may have. Longer
            prompts and targets are **truncated** (prompts keep their end, where the question is; targets keep their
            start) and a warning says how many were cut. `None` means the tokenizer's `model_max_length` when that is
            a real limit, else no limit.

    Encoder-decoder (mT0): `input_ids` = the prompt, right-padded; `labels` = the target, padded with -100.
    Decoder-only (BLOOMZ, Llama): `input_ids` = prompt + target + EOS, left-padded; `labels` = the same ids with
    -100 on the prompt and the padding. Without `text_target`, decoder-only `input_ids` is the left-padded prompt,
    ready for `generate`.
    """

    def __init__(self, image_processor=None, tokenizer=None, is_encoder_decoder=None, max_length=None, **kwargs):
        if is_encoder_decoder is None:
            raise ValueError(
                "MBlipProcessor needs `is_encoder_decoder` (the LLM family it prepares inputs for); build it with "
                "MBlipProcessor.for_model_config(model.config, image_processor, tokenizer), or turn a checkpoint in "
                "BLIP-2 format into an mBLIP repository: python convert_mblip.py --from_blip2 SRC --output_dir DST"
            )
        self.is_encoder_decoder = bool(is_encoder_decoder)
        self.max_length = max_length
        super().__init__(image_processor, tokenizer, **kwargs)
        if tokenizer is not None:
            # Decoder-only LLMs continue the prompt's last token, so prompts are left-padded.
            tokenizer.padding_side = "right" if self.is_encoder_decoder else "left"
            if tokenizer.pad_token is None:
                if tokenizer.eos_token is None:
                    raise ValueError("The tokenizer has neither a pad token nor an EOS token to pad with.")
                tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def for_model_config(cls, config, image_processor, tokenizer, **kwargs) -> "MBlipProcessor":
        """A processor for the LLM family of an `MBlipConfig` (or of any config with `is_encoder_decoder`)."""
        text_config = getattr(config, "text_config", config)
        return cls(image_processor, tokenizer, is_encoder_decoder=text_config.is_encoder_decoder, **kwargs)

    # ---------------------------------------------------------------- text
    def _limit(self) -> int | None:
        if self.max_length is not None:
            return int(self.max_length)
        limit = getattr(self.tokenizer, "model_max_length", None)
        return int(limit) if limit is not None and limit < 1_000_000 else None

    def _tokenize(self, texts, add_special_tokens: bool, keep: str, what: str) -> list[list[int]]:
        ids = self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
        limit = self._limit()
        if limit is not None:
            too_long = [len(x) for x in ids if len(x) > limit]
            if too_long:
                logger.warning(
                    f"Truncated {len(too_long)} of {len(ids)} {what}s to {limit} tokens (longest: {max(too_long)})."
                )
                ids = [x if len(x) <= limit else (x[-limit:] if keep == "end" else x[:limit]) for x in ids]
        return ids

    def _pad(self, sequences: list[list[int]], value: int, side: str) -> torch.Tensor:
        width = max((len(s) for s in sequences), default=0)
        out = torch.full((len(sequences), width), value, dtype=torch.long)
        for row, seq in enumerate(sequences):
            if seq:
                if side == "left":
                    out[row, width - len(seq) :] = torch.tensor(seq)
                else:
                    out[row, : len(seq)] = torch.tensor(seq)
        return out

    def _encode_text(self, prompts: list[str], targets: list[str] | None) -> dict:
        pad_id = self.tokenizer.pad_token_id
        prompt_ids = self._tokenize(prompts, add_special_tokens=True, keep="end", what="prompt")
        if self.is_encoder_decoder:
            input_ids = self._pad(prompt_ids, pad_id, "right")
            encoded = {"input_ids": input_ids, "attention_mask": (self._pad([[1] * len(p) for p in prompt_ids], 0, "right"))}
            if targets is not None:
                # The seq2seq tokenizer appends EOS to targets itself (T5: "</s>").
                target_ids = self._tokenize(targets, add_special_tokens=True, keep="start", what="target")
                encoded["labels"] = self._pad(target_ids, IGNORE_INDEX, "right")
            return encoded

        sequences, labels = prompt_ids, None
        if targets is not None:
            eos = self.tokenizer.eos_token_id
            if eos is None:
                raise ValueError("Decoder-only training needs an EOS token to end targets; the tokenizer has none.")
            target_ids = self._tokenize(targets, add_special_tokens=False, keep="start", what="target")
            target_ids = [t + [eos] for t in target_ids]
            sequences = [p + t for p, t in zip(prompt_ids, target_ids)]
            labels = self._pad([[IGNORE_INDEX] * len(p) + t for p, t in zip(prompt_ids, target_ids)], IGNORE_INDEX, "left")
        encoded = {
            "input_ids": self._pad(sequences, pad_id, "left"),
            "attention_mask": self._pad([[1] * len(s) for s in sequences], 0, "left"),
        }
        if labels is not None:
            encoded["labels"] = labels
        return encoded

    # ---------------------------------------------------------------- images
    def _encode_images(self, images, batch_size: int | None, **image_kwargs) -> torch.Tensor:
        """One image, a list (one per example) or a list of lists (several per example, equal counts)."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise ValueError("`images` is empty: pass one image (or one list of images) per example.")
        nested = isinstance(images[0], (list, tuple))
        if nested:
            counts = {len(group) for group in images}
            if len(counts) != 1 or 0 in counts:
                raise ValueError(
                    f"Every example needs the same number of images (at least one); got counts {[len(g) for g in images]}"
                )
        groups = [list(g) for g in images] if nested else [[image] for image in images]
        if batch_size is not None and len(groups) != batch_size:
            raise ValueError(f"Got {len(groups)} images (or image groups) but {batch_size} prompts; they must match.")
        flat = [to_rgb(image, index) for index, image in enumerate(img for group in groups for img in group)]
        pixel_values = self.image_processor(flat, return_tensors="pt", **image_kwargs)["pixel_values"]
        if nested:
            pixel_values = pixel_values.reshape(len(groups), len(groups[0]), *pixel_values.shape[1:])
        return pixel_values

    def __call__(self, images=None, text=None, text_target=None, return_tensors="pt", padding=True, **kwargs):
        """
        Args:
            images: a PIL image (any mode), numpy array or tensor; a list with one per example; or a list of
                equally long lists for several images per example (MaRVL's left/right pairs).
            text (`str` or `list[str]`): the prompts. `None` means empty prompts (plain captioning).
            text_target (`str` or `list[str]`, *optional*): the targets, for training.
            return_tensors: only "pt" is supported.
            padding: always pads to the longest in the batch (kept for API compatibility).

        Returns:
            `BatchFeature` with `pixel_values`, `input_ids`, `attention_mask` and, with targets, `labels`.
        """
        if return_tensors not in ("pt", None):
            raise ValueError(f"MBlipProcessor returns PyTorch tensors only; got return_tensors={return_tensors!r}")
        if padding not in (True, "longest"):
            raise ValueError(f"MBlipProcessor pads to the longest sequence; got padding={padding!r}")
        if images is None and text is None:
            raise ValueError("Pass `images`, `text`, or both.")
        prompts = [text] if isinstance(text, str) else (list(text) if text is not None else None)
        targets = [text_target] if isinstance(text_target, str) else (list(text_target) if text_target is not None else None)
        if prompts is not None and len(prompts) == 0:
            raise ValueError("`text` is an empty list: pass one prompt per example.")
        if prompts is not None and not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"`text` must be strings; got types {sorted({type(p).__name__ for p in prompts})}")
        if targets is not None:
            if not all(isinstance(t, str) for t in targets):
                raise ValueError(f"`text_target` must be strings; got {sorted({type(t).__name__ for t in targets})}")
            if prompts is None:
                prompts = [""] * len(targets)
            if len(targets) != len(prompts):
                raise ValueError(f"Got {len(prompts)} prompts but {len(targets)} targets; they must match.")

        data = {}
        if images is not None:
            data["pixel_values"] = self._encode_images(images, len(prompts) if prompts is not None else None, **kwargs)
        if prompts is None:
            prompts = [""] * data["pixel_values"].shape[0]
        data.update(self._encode_text(prompts, targets))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self):
        return ["pixel_values", "input_ids", "attention_mask"]


__all__ = ["MBlipProcessor", "to_rgb"]
