# Copyright 2026 The mBLIP toolkit authors. Licensed under the MIT License (see LICENSE).
"""mBLIP processor: BLIP's image processor + the LLM's tokenizer, producing the model's input contract."""

import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import load_image
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, TextKwargs
from transformers.utils import is_numpy_array, is_vision_available, logging


if is_vision_available():
    import PIL.Image

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100
# PIL modes whose samples exceed 8 bits; PIL's own convert("RGB") would clip them to white.
_HIGH_BIT_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


def _high_bit_depth_to_8bit(image) -> "PIL.Image.Image":
    if image.mode.startswith("I;16"):
        # First, and without getextrema: PIL has none for big-endian I;16B (it raises "image has wrong mode").
        return image.convert("I").point(lambda v: v * (1 / 257)).convert("L")  # the 16-bit range onto 8 bits
    high = image.getextrema()[1]
    if image.mode == "F":
        # Float images are taken to be in [0, 1] when they fit, else in [0, 255].
        scale = 255.0 if high <= 1.0 else 1.0
        return image.point(lambda v: v * scale).convert("L")
    if high > 255:
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
        raise ValueError(f"{what} has shape {tuple(image.shape)}: expected 1 (grey), 3 (RGB) or 4 (RGBA) channels")
    if image.dtype == torch.bool:
        image = image.to(torch.uint8) * 255
    elif image.is_floating_point():
        # Floats in [0, 1] are the common convention (torchvision's ToTensor); larger values are taken as 0-255.
        scale = 255.0 if image.numel() and float(image.max()) <= 1.0 else 1.0
        image = (image.float() * scale).round().clamp(0, 255).to(torch.uint8)
    elif image.dtype != torch.uint8:
        image = image.long()
        image = image.float() / 257.0 if image.numel() and int(image.max()) > 255 else image.float()
        image = image.round().clamp(0, 255).to(torch.uint8)
    if image.shape[-1] == 1:
        image = image.expand(-1, -1, 3)
    elif image.shape[-1] == 4:
        # Composite transparency onto white, as for PIL images.
        alpha = image[..., 3:4].float() / 255.0
        image = (image[..., :3].float() * alpha + 255.0 * (1.0 - alpha)).round().to(torch.uint8)
    return PIL.Image.fromarray(image.contiguous().numpy(), mode="RGB")


def to_rgb(image, index: int = 0) -> "PIL.Image.Image":
    """Any PIL mode (RGB, RGBA, L, LA, P, CMYK, 1, I;16, I, F), numpy array, tensor, file path, URL or base64 string
    -> an RGB PIL image. Strings are opened by transformers' own `load_image`, as the pipelines do."""
    what = f"image {index}"
    if isinstance(image, str):
        try:
            image = load_image(image)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"{what} is the string {image[:200]!r}, which is not an image file, URL or base64 image: {err}"
            ) from err
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
    raise ValueError(
        f"{what} is a {type(image).__name__}; expected a PIL image, a numpy array, a torch tensor, a path or a URL"
    )


# The official mBLIP prompt is the plain instruction; the images reach the LLM as query embeddings in front of it, so
# the template writes the text of the turns and nothing for the images. A turn with images but no text gets the
# captioning prompt of the XM3600 evaluation.
DEFAULT_CAPTION_PROMPT = "Caption in English:"
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{- raise_exception('mBLIP was trained without system prompts; put the instruction in the user turn.') -}}"
    "{%- endif -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
    " | join(' ') -%}{%- endif -%}"
    "{%- if not text and message['role'] == 'user' -%}{%- set text = '" + DEFAULT_CAPTION_PROMPT + "' -%}{%- endif -%}"
    "{%- if not loop.first -%}{{- ' ' -}}{%- endif -%}"
    "{{- text -}}"
    "{%- endfor -%}"
)

# Tokenizer keywords that only make sense for plain tokenization: mBLIP builds `input_ids`, `attention_mask` and
# `labels` itself (left padding before the visual prefix, targets with -100 labels), so they have nothing to act on.
_UNSUPPORTED_TEXT_KWARGS = (
    "stride",
    "is_split_into_words",
    "return_overflowing_tokens",
    "return_special_tokens_mask",
    "return_offsets_mapping",
    "return_length",
    "text_pair",
    "text_pair_target",
    "return_mm_token_type_ids",
    "return_text_replacement_offsets",
    "sanitize_control_tokens",
)
_TRUNCATE = {True, "longest_first", "only_first"}
_NO_TRUNCATION = {False, "do_not_truncate"}
_PAD_LONGEST = {True, "longest"}
_NO_PADDING = {False, "do_not_pad"}


def _strategy(value):
    """A padding or truncation strategy as a plain value (`PaddingStrategy.LONGEST` -> "longest")."""
    return getattr(value, "value", value)


class MBlipTextKwargs(TextKwargs, total=False):
    # Which end of an over-long prompt is cut: "left" keeps its end (the default), "right" keeps its start (the official
    # mBLIP training code). Not `truncation_side`, which saved tokenizer configs carry and would silently override.
    prompt_truncation_side: str


class MBlipProcessorKwargs(ProcessingKwargs, total=False):
    text_kwargs: MBlipTextKwargs


class MBlipProcessor(ProcessorMixin):
    r"""
    Wraps BLIP's image processor and the LLM's tokenizer into the input contract of `MBlipForConditionalGeneration`.

    Args:
        image_processor (`BlipImageProcessor`): resizes to the ViT's size and normalises.
        tokenizer: the language model's tokenizer.
        is_encoder_decoder (`bool`): the LLM family this processor serves; saved with it, never guessed.
            Use `MBlipProcessor.for_model_config(config, ...)` to take it from an `MBlipConfig`.
        max_length (`int`, *optional*): the most tokens a prompt (and, separately, a target) may have. Longer
            prompts and targets are **truncated** (prompts keep their end, where the question is, unless called with
            `prompt_truncation_side="right"`; targets keep their start; tokens the tokenizer adds, such as T5's EOS,
            are always kept) and a warning says how many were cut. `None` means the tokenizer's `model_max_length` when that is
            a real limit, else no limit. A call's `max_length=` / `truncation=` override it.
        chat_template (`str`, *optional*): defaults to mBLIP's, which turns one user turn into the plain prompt.

    Encoder-decoder (mT0): `input_ids` = the prompt, right-padded; `labels` = the target, padded with -100.
    Decoder-only (BLOOMZ, Llama): `input_ids` = prompt + target + EOS, left-padded; `labels` = the same ids with
    -100 on the prompt and the padding. Without `text_target`, decoder-only `input_ids` is the left-padded prompt,
    ready for `generate`.
    """

    valid_processor_kwargs = MBlipProcessorKwargs

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        is_encoder_decoder=None,
        max_length=None,
        chat_template=None,
        **kwargs,
    ):
        if is_encoder_decoder is None:
            raise ValueError(
                "MBlipProcessor needs `is_encoder_decoder` (the LLM family it prepares inputs for); build it with "
                "MBlipProcessor.for_model_config(model.config, image_processor, tokenizer), or turn a checkpoint in "
                "BLIP-2 format into an mBLIP repository: python convert_mblip.py --from_blip2 SRC --output_dir DST"
            )
        self.is_encoder_decoder = bool(is_encoder_decoder)
        self.max_length = max_length
        # Processors saved before the template existed (the released checkpoints among them) get it on loading.
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE, **kwargs)
        if tokenizer is not None:
            tokenizer.padding_side = self._padding_side
            if tokenizer.pad_token is None:
                if tokenizer.eos_token is None:
                    raise ValueError("The tokenizer has neither a pad token nor an EOS token to pad with.")
                tokenizer.pad_token = tokenizer.eos_token

    @property
    def _padding_side(self) -> str:
        # Decoder-only LLMs continue the prompt's last token, so prompts are left-padded.
        return "right" if self.is_encoder_decoder else "left"

    @classmethod
    def for_model_config(cls, config, image_processor, tokenizer, **kwargs) -> "MBlipProcessor":
        """A processor for the LLM family of an `MBlipConfig` (or of any config with `is_encoder_decoder`)."""
        text_config = getattr(config, "text_config", config)
        return cls(image_processor, tokenizer, is_encoder_decoder=text_config.is_encoder_decoder, **kwargs)

    # ---------------------------------------------------------------- text
    def _text_options(self, text_kwargs: dict) -> dict:
        """The tokenizer keywords of one call, checked against what mBLIP's input contract allows."""
        for name in _UNSUPPORTED_TEXT_KWARGS:
            if text_kwargs.get(name):
                raise ValueError(
                    f"MBlipProcessor does not support {name}={text_kwargs[name]!r}: it builds `input_ids`, "
                    "`attention_mask` and `labels` itself (visual prefix, prompt + target, -100 labels). Tokenize "
                    "with `processor.tokenizer` for plain tokenizer outputs."
                )
        if text_kwargs.get("return_token_type_ids"):
            raise ValueError("MBlipProcessor does not return token type ids: no mBLIP LLM takes them.")
        side = text_kwargs.get("padding_side")
        if side is not None and side != self._padding_side:
            family = "encoder-decoder" if self.is_encoder_decoder else "decoder-only"
            raise ValueError(
                f"padding_side={side!r}, but this processor serves a {family} LLM, whose prompts are "
                f"{self._padding_side}-padded (decoder-only models continue the prompt's last token, and the model "
                "moves the padding in front of the image queries); drop `padding_side`."
            )
        padding = _strategy(text_kwargs.get("padding", True))
        if padding is None:
            padding = True
        if padding not in _PAD_LONGEST | _NO_PADDING | {"max_length"}:
            raise ValueError(f"padding={padding!r}: expected True, 'longest', 'max_length', False or 'do_not_pad'")
        truncation = _strategy(text_kwargs.get("truncation"))
        if truncation is not None and truncation not in _TRUNCATE | _NO_TRUNCATION:
            raise ValueError(
                f"truncation={truncation!r}: expected True, 'longest_first', 'only_first', False or "
                "'do_not_truncate' (a prompt has no second sequence to truncate)"
            )
        max_length = text_kwargs.get("max_length")
        if max_length is None:
            max_length = self._limit()
        if truncation in _TRUNCATE and max_length is None:
            raise ValueError(
                f"truncation={truncation!r} needs a limit: pass max_length=, or build the processor with max_length"
            )
        if padding == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length= (the processor and tokenizer set no limit)")
        prompt_side = text_kwargs.get("prompt_truncation_side") or "left"
        if prompt_side not in ("left", "right"):
            raise ValueError(f"prompt_truncation_side={prompt_side!r}: expected 'left' (keep the end) or 'right'")
        multiple = text_kwargs.get("pad_to_multiple_of")
        if multiple is not None and (not isinstance(multiple, int) or multiple < 1):
            raise ValueError(f"pad_to_multiple_of must be a positive int, got {multiple!r}")
        return {
            "add_special_tokens": text_kwargs.get("add_special_tokens", True) is not False,
            "padding": padding,
            # Truncation is on unless turned off: an over-long prompt would otherwise overrun the LLM's positions.
            "max_length": None if truncation in _NO_TRUNCATION else max_length,
            "pad_length": max_length,
            "pad_to_multiple_of": multiple,
            "prompt_keep": "end" if prompt_side == "left" else "start",
            "return_attention_mask": text_kwargs.get("return_attention_mask", True) is not False,
        }

    def _limit(self) -> int | None:
        if self.max_length is not None:
            return int(self.max_length)
        limit = getattr(self.tokenizer, "model_max_length", None)
        return int(limit) if limit is not None and limit < 1_000_000 else None

    def _tokenize(self, texts, add_special_tokens: bool, limit: int | None, keep: str, what: str) -> list[list[int]]:
        ids = self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
        if limit is not None:
            too_long = [i for i, x in enumerate(ids) if len(x) > limit]
            if too_long:
                logger.warning(
                    f"Truncated {len(too_long)} of {len(ids)} {what}s to {limit} tokens "
                    f"(longest: {max(len(ids[i]) for i in too_long)})."
                )
                plain = self.tokenizer([texts[i] for i in too_long], add_special_tokens=False)["input_ids"]
                for i, body in zip(too_long, plain):
                    ids[i] = self._truncate(ids[i], body, limit, keep)
        return ids

    @staticmethod
    def _truncate(ids: list[int], body: list[int], limit: int, keep: str) -> list[int]:
        """`ids` cut to `limit` tokens from the text's `body` (its ids without special tokens), keeping the tokens the
        tokenizer added around it (T5's EOS, Llama's BOS), as the tokenizer's own truncation does."""
        added = len(ids) - len(body)
        start = next((s for s in range(added + 1) if ids[s : s + len(body)] == body), None)
        if start is None or added >= limit:  # the body is not found verbatim: cut the sequence as it is
            return ids[-limit:] if keep == "end" else ids[:limit]
        prefix, suffix, room = ids[:start], ids[start + len(body) :], limit - added
        return prefix + (body[-room:] if keep == "end" else body[:room]) + suffix

    @staticmethod
    def _pad(sequences: list[list[int]], value: int, side: str, width: int | None) -> list[list[int]]:
        if width is None:
            return [list(seq) for seq in sequences]
        return [
            [value] * (width - len(seq)) + list(seq) if side == "left" else list(seq) + [value] * (width - len(seq))
            for seq in sequences
        ]

    def _width(self, sequences: list[list[int]], options: dict) -> int | None:
        """The padded length of a batch, as the tokenizer would choose it for the padding strategy."""
        longest = max((len(s) for s in sequences), default=0)
        if options["padding"] in _NO_PADDING:
            return None
        width = longest
        if options["padding"] == "max_length":
            width = options["pad_length"]
            if longest > width:
                raise ValueError(
                    f"padding='max_length' with max_length={width}, but a sequence has {longest} tokens (decoder-only "
                    "input_ids hold prompt + target, each up to max_length); raise max_length or pad to 'longest'"
                )
        multiple = options["pad_to_multiple_of"]
        if multiple is not None and width % multiple:
            width += multiple - width % multiple
        return width

    def _encode_text(self, prompts: list[str], targets: list[str] | None, options: dict) -> dict:
        pad_id = self.tokenizer.pad_token_id
        limit, side = options["max_length"], self._padding_side
        prompt_ids = self._tokenize(
            prompts, options["add_special_tokens"], limit, keep=options["prompt_keep"], what="prompt"
        )
        if self.is_encoder_decoder:
            encoded = {"input_ids": prompt_ids}
            if targets is not None:
                # The seq2seq tokenizer appends EOS to targets itself (T5: "</s>").
                target_ids = self._tokenize(targets, options["add_special_tokens"], limit, keep="start", what="target")
                encoded["labels"] = self._pad(target_ids, IGNORE_INDEX, side, self._width(target_ids, options))
        else:
            sequences, encoded = prompt_ids, {}
            if targets is not None:
                eos = self.tokenizer.eos_token_id
                if eos is None:
                    raise ValueError("Decoder-only training needs an EOS token to end targets; the tokenizer has none.")
                target_ids = self._tokenize(targets, False, limit, keep="start", what="target")
                target_ids = [t + [eos] for t in target_ids]
                sequences = [p + t for p, t in zip(prompt_ids, target_ids)]
                labels = [[IGNORE_INDEX] * len(p) + t for p, t in zip(prompt_ids, target_ids)]
                encoded["labels"] = self._pad(labels, IGNORE_INDEX, side, self._width(sequences, options))
            encoded["input_ids"] = sequences
        sequences = encoded["input_ids"]
        width = self._width(sequences, options)
        encoded["input_ids"] = self._pad(sequences, pad_id, side, width)
        if options["return_attention_mask"]:
            encoded["attention_mask"] = self._pad([[1] * len(s) for s in sequences], 0, side, width)
        return encoded

    # ---------------------------------------------------------------- images
    def _encode_images(self, images, batch_size: int | None, **images_kwargs) -> torch.Tensor:
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
        # The ViT takes one stacked batch whatever the caller asked for; `return_tensors` applies to the output.
        images_kwargs.pop("return_tensors", None)
        pixel_values = self.image_processor(flat, return_tensors="pt", **images_kwargs)["pixel_values"]
        if nested:
            pixel_values = pixel_values.reshape(len(groups), len(groups[0]), *pixel_values.shape[1:])
        return pixel_values

    def __call__(self, images=None, text=None, text_target=None, videos=None, audio=None, **kwargs):
        """
        Args:
            images: a PIL image (any mode), numpy array, tensor, file path or URL; a list with one per example; or a
                list of equally long lists for several images per example (MaRVL's left/right pairs).
            text (`str` or `list[str]`): the prompts. `None` means empty prompts (plain captioning).
            text_target (`str` or `list[str]`, *optional*): the targets, for training.
            kwargs: processor keywords as for any transformers processor, flat or grouped (`text_kwargs={...}`,
                `images_kwargs={...}`). Text: `padding` (True/"longest", the default; "max_length"; False),
                `truncation` (on by default when a limit is known), `max_length`, `prompt_truncation_side`
                ("left", the default, keeps a long prompt's end; "right" its start), `add_special_tokens`,
                `pad_to_multiple_of`, `return_attention_mask`. Images: the image processor's keywords (`size`,
                `do_normalize`, ...). `return_tensors`: "pt" (the default), "np" or None (lists).

        Returns:
            `BatchFeature` with `pixel_values`, `input_ids`, `attention_mask` and, with targets, `labels`.
        """
        if videos is not None or audio is not None:
            raise ValueError(
                f"MBlipProcessor takes images and text only; got videos={type(videos).__name__}, "
                f"audio={type(audio).__name__}"
            )
        merged = self._merge_kwargs(MBlipProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        text_kwargs, images_kwargs = merged["text_kwargs"], merged["images_kwargs"]
        if text_target is None:
            text_target = text_kwargs.pop("text_target", None)
        return_tensors = text_kwargs.pop("return_tensors", images_kwargs.get("return_tensors", "pt"))
        return_tensors = getattr(return_tensors, "value", return_tensors)
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors={return_tensors!r}: MBlipProcessor returns 'pt', 'np' or None (lists)")
        options = self._text_options(text_kwargs)
        if images is None and text is None and text_target is None:
            raise ValueError("Pass `images`, `text`, or both.")
        prompts = [text] if isinstance(text, str) else (list(text) if text is not None else None)
        targets = (
            [text_target] if isinstance(text_target, str) else (list(text_target) if text_target is not None else None)
        )
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
            batch_size = len(prompts) if prompts is not None else None
            data["pixel_values"] = self._encode_images(images, batch_size, **images_kwargs)
        if prompts is None:
            prompts = [""] * data["pixel_values"].shape[0]
        data.update(self._encode_text(prompts, targets, options))
        if return_tensors is not None and options["padding"] in _NO_PADDING:
            for key in ("input_ids", "labels"):
                lengths = sorted({len(row) for row in data.get(key, [])})
                if len(lengths) > 1:
                    raise ValueError(
                        f"padding={options['padding']!r} leaves `{key}` rows of lengths {lengths}, which cannot be "
                        f"stacked into return_tensors={return_tensors!r}; pad, or pass return_tensors=None for lists"
                    )
        if return_tensors is None:
            if "pixel_values" in data:
                data["pixel_values"] = list(data["pixel_values"].numpy())
            return BatchFeature(data=data)
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self):
        return ["pixel_values", "input_ids", "attention_mask"]


__all__ = ["MBlipProcessor", "to_rgb", "CHAT_TEMPLATE", "DEFAULT_CAPTION_PROMPT"]
