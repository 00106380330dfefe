# Copyright 2026 The mBLIP toolkit authors. Licensed under the MIT License (see LICENSE).
"""mBLIP: BLIP-2's ViT and Q-Former, linearly projected into a multilingual LLM (Geigle et al., 2023).

The submodule names are those of transformers' `Blip2ForConditionalGeneration` (`vision_model`, `qformer`,
`query_tokens`, `language_projection`, `language_model`), so the released mBLIP checkpoints, which were published
in BLIP-2 format, and BLIP-2 checkpoints load key for key. Unlike BLIP-2 in transformers 5, prompts carry no image
placeholder tokens: the projected queries are put in front of the prompt, as in the paper.
"""

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    GenerationConfig,
    GenerationMixin,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.loss.loss_utils import fixed_cross_entropy
from transformers.modeling_outputs import ModelOutput
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel, Blip2VisionModel
from transformers.utils import logging

from .configuration_mblip import MBlipConfig, attention_per_sub_config


logger = logging.get_logger(__name__)

IGNORE_INDEX = -100
# What `model.generate(**inputs)` does when neither the call nor the repository's generation_config.json says
# otherwise: a caption-length answer, greedily. The benchmarks pass the paper's decoding settings explicitly
# (5 beams and its length limits, see the evaluation tasks), so these defaults never change a reported number.
# save_pretrained writes them to generation_config.json, where a repository can change them.
CAPTIONING_GENERATION_DEFAULTS = {"max_new_tokens": 30}


@dataclass
class MBlipOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor`, *optional*): language-modelling loss over the target tokens only.
        logits (`torch.FloatTensor`): for encoder-decoder LLMs the decoder's logits, shaped like `labels`; for
            decoder-only LLMs the logits at the positions of `input_ids` (the visual prefix is left out).
        image_features (`torch.FloatTensor`): the projected query embeddings put in front of the prompt,
            `(batch, n_images * num_query_tokens, llm_hidden_size)`.
        language_model_outputs: the LLM's own output object.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    image_features: torch.FloatTensor | None = None
    language_model_outputs: Any = None


class MBlipPreTrainedModel(PreTrainedModel):
    config_class = MBlipConfig
    config: MBlipConfig
    base_model_prefix = "mblip"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    # mBLIP has no attention layer of its own: each sub-model checks the implementation it is given. One flash value
    # goes to the ViT and the LLM while the Q-Former keeps sdpa (see `attention_per_sub_config`).
    _supports_flash_attn = True
    _supports_flex_attn = False
    # The Q-Former and its queries stay in fp32 under fp16, as in BLIP-2. The LLM adds its own entries on post_init
    # (T5's `wo`), and its `_no_split_modules` too, so `device_map="auto"` never splits one of its layers.
    _keep_in_fp32_modules = ["query_tokens", "qformer"]
    _no_split_modules = [
        "Blip2Attention",
        "Blip2QFormerMultiHeadAttention",
        "Blip2EncoderLayer",
        "Blip2TextEmbeddings",
        "Blip2VisionEmbeddings",
    ]
    _skip_keys_device_placement = ["past_key_values"]

    @torch.no_grad()
    def _init_weights(self, module):
        # Sub-models (ViT, Q-Former, LLM) initialise themselves; here only what mBLIP adds on top.
        std = self.config.initializer_range
        if isinstance(module, MBlipForConditionalGeneration):
            init.normal_(module.query_tokens, mean=0.0, std=std)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)


class MBlipForConditionalGeneration(MBlipPreTrainedModel, GenerationMixin):
    r"""
    BLIP-2's vision stack re-aligned to a multilingual language model.

    Input contract (what `MBlipProcessor` produces):
    - encoder-decoder LLMs (mT0, mT5, T5): `input_ids` is the prompt, right-padded; `labels` are the target ids,
      with -100 on padding.
    - decoder-only LLMs (BLOOMZ, Llama, Qwen2, ...): `input_ids` is prompt + target, left-padded; `labels` has the
      same shape, with -100 on prompt and padding.

    The projected image queries go in front of the prompt. For decoder-only LLMs the left padding is moved in front
    of the visual prefix, so every example sees the positions it would see alone (the official code padded between
    the prefix and the prompt, which shifts rotary positions). Sequence lengths are not checked against the LLM's
    position limit; the processor truncates over-long prompts (see `MBlipProcessor`).
    """

    def __init__(self, config: MBlipConfig):
        super().__init__(config)
        self.vision_model = Blip2VisionModel._from_config(config.vision_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
        self.qformer = Blip2QFormerModel._from_config(config.qformer_config)
        self.language_projection = nn.Linear(config.qformer_config.hidden_size, config.text_config.hidden_size)
        if config.is_encoder_decoder:
            self.language_model = AutoModelForSeq2SeqLM.from_config(config.text_config)
        else:
            self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()
        for name, value in CAPTIONING_GENERATION_DEFAULTS.items():
            if getattr(self.generation_config, name, None) is None:
                setattr(self.generation_config, name, value)
        # Every label that is not -100 is a prediction target for both LLM families (the decoder-only loss lets the
        # last visual position predict the first text token). Without a causal-LM loss type, the Trainer counts
        # `num_items_in_batch` over all labels instead of `labels[..., 1:]`.
        self.loss_type = None

    # ---------------------------------------------------------------- loading
    # The vision stack that is not quantized when a bitsandbytes config arrives without its own skip list.
    _vision_stack_modules = ["vision_model", "qformer", "query_tokens", "language_projection"]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, except that a bitsandbytes `quantization_config` quantizes only the LLM.

        transformers would quantize every linear layer but the output head; the mBLIP authors report that quantizing
        the vision stack costs accuracy, so unless the config names its own `llm_int8_skip_modules`, the ViT,
        Q-Former and projection stay in the requested dtype.
        """
        quantization_config = kwargs.get("quantization_config")
        if quantization_config is not None and getattr(quantization_config, "quant_method", None) == "bitsandbytes":
            if getattr(quantization_config, "llm_int8_skip_modules", None) is None:
                quantization_config = type(quantization_config).from_dict(quantization_config.to_dict())
                # "lm_head" is the output layer's module name in transformers' LM classes; keep it un-quantized as
                # transformers' own default does.
                quantization_config.llm_int8_skip_modules = cls._vision_stack_modules + ["lm_head"]
                kwargs["quantization_config"] = quantization_config
        return super().from_pretrained(*args, **kwargs)

    def set_attn_implementation(self, attn_implementation, allow_all_kernels: bool = False):
        """`PreTrainedModel.set_attn_implementation`, with one flash value leaving the Q-Former on sdpa."""
        return super().set_attn_implementation(
            attention_per_sub_config(attn_implementation), allow_all_kernels=allow_all_kernels
        )

    # ---------------------------------------------------------------- LLM delegation
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings):
        self.language_model.set_output_embeddings(new_embeddings)

    def get_encoder(self, modality=None):
        if modality is None and self.config.is_encoder_decoder:
            return self.language_model.get_encoder()
        return super().get_encoder(modality=modality) if modality is not None else None

    def get_decoder(self):
        return self.language_model.get_decoder()

    # ---------------------------------------------------------------- the paper's steps 1-3
    def _check_pixel_values(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool) -> torch.Tensor:
        """(batch, 3, H, W) or (batch, n_images, 3, H, W) -> (batch, n_images, 3, H, W)."""
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.ndim == 4:
            pixel_values = pixel_values.unsqueeze(1)
        if pixel_values.ndim != 5:
            raise ValueError(
                "`pixel_values` must be (batch, 3, height, width) or (batch, n_images, 3, height, width), "
                f"got shape {tuple(pixel_values.shape)}"
            )
        if pixel_values.shape[0] == 0 or pixel_values.shape[1] == 0:
            raise ValueError(f"`pixel_values` holds no image: shape {tuple(pixel_values.shape)}")
        if pixel_values.shape[2] != 3:
            raise ValueError(
                f"`pixel_values` must have 3 (RGB) channels, got {pixel_values.shape[2]} in shape "
                f"{tuple(pixel_values.shape)}; the processor converts any image mode to RGB"
            )
        size = self.config.vision_config.image_size
        expected = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        if not interpolate_pos_encoding and tuple(pixel_values.shape[-2:]) != expected:
            raise ValueError(
                f"`pixel_values` are {tuple(pixel_values.shape[-2:])} pixels but the ViT expects {expected}; "
                "resize with the processor or pass `interpolate_pos_encoding=True`"
            )
        return pixel_values

    def _vision_needs_grad(self, pixel_values: torch.Tensor | None) -> bool:
        # A frozen ViT on constant pixels needs no autograd graph: skipping it saves its activations in training.
        if pixel_values is not None and pixel_values.requires_grad:
            return True
        return any(p.requires_grad for p in self.vision_model.parameters())

    def get_image_features(
        self,
        pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """The projected query embeddings: what the LLM sees of the images.

        Args:
            pixel_values: `(batch, 3, H, W)`, or `(batch, n_images, 3, H, W)` for several images per example.
            image_embeds: instead of pixels, the ViT's last hidden states, `(batch, [n_images,] patches, width)`,
                e.g. precomputed once for a frozen ViT.

        Returns:
            `(batch, n_images * num_query_tokens, llm_hidden_size)`; each image's queries in order.
        """
        if (pixel_values is None) == (image_embeds is None):
            raise ValueError("Pass exactly one of `pixel_values` and `image_embeds`.")
        if pixel_values is not None:
            pixel_values = self._check_pixel_values(pixel_values, interpolate_pos_encoding)
            batch_size, n_images = pixel_values.shape[:2]
            # Step 1: the ViT encodes each image into patch embeddings.
            with torch.set_grad_enabled(torch.is_grad_enabled() and self._vision_needs_grad(pixel_values)):
                vision_param = self.vision_model.embeddings.patch_embedding.weight
                image_embeds = self.vision_model(
                    pixel_values=pixel_values.flatten(0, 1).to(vision_param.device, vision_param.dtype),
                    interpolate_pos_encoding=interpolate_pos_encoding,
                    return_dict=True,
                ).last_hidden_state
        else:
            if image_embeds.ndim == 3:
                image_embeds = image_embeds.unsqueeze(1)
            if image_embeds.ndim != 4 or image_embeds.shape[-1] != self.config.vision_config.hidden_size:
                raise ValueError(
                    "`image_embeds` must be (batch, [n_images,] patches, "
                    f"{self.config.vision_config.hidden_size}), got shape {tuple(image_embeds.shape)}"
                )
            batch_size, n_images = image_embeds.shape[:2]
            image_embeds = image_embeds.flatten(0, 1)

        # Step 2: the learned queries cross-attend to the patches (all patches are valid, so no mask is needed).
        query_tokens = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        query_output = self.qformer(
            query_embeds=query_tokens,
            encoder_hidden_states=image_embeds.to(query_tokens.device),
            return_dict=True,
        ).last_hidden_state

        # Step 3: the new linear projection maps each query into the LLM's input-embedding space.
        weight = self.language_projection.weight
        image_features = self.language_projection(query_output.to(weight.device, weight.dtype))
        return image_features.reshape(batch_size, n_images * self.config.num_query_tokens, -1)

    # ---------------------------------------------------------------- putting the images in front of the prompt
    @staticmethod
    def _check_padding(attention_mask: torch.Tensor, side: str):
        """Decoder-only prompts must be left-padded, encoder-decoder prompts right-padded."""
        if attention_mask.shape[1] < 2:
            return
        mask = attention_mask.bool()
        # Left padding: once a row has a real token, it has only real tokens after it. Right padding: the reverse.
        ok = (mask[:, :-1] <= mask[:, 1:]) if side == "left" else (mask[:, :-1] >= mask[:, 1:])
        if not bool(ok.all()):
            bad = (~ok.all(dim=1)).nonzero().flatten().tolist()
            raise ValueError(
                f"This mBLIP model's LLM expects {side}-padded prompts, but rows {bad[:8]} of `attention_mask` are "
                f"not; e.g. row {bad[0]}: {attention_mask[bad[0]].tolist()[:64]}. Use MBlipProcessor, or set "
                f"`tokenizer.padding_side = '{side}'`."
            )

    def _build_llm_inputs(self, image_features, input_ids, attention_mask, inputs_embeds):
        """Visual prefix + prompt embeddings, and the matching attention mask.

        Encoder-decoder: [visual | prompt | padding]. Decoder-only: [padding | visual | prompt (+ target)], so that
        the last `input_ids.shape[1]` positions line up with `input_ids`. `image_features=None` means no image.
        """
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        batch_size, text_len = inputs_embeds.shape[:2]
        if image_features is None:  # text only: an empty visual prefix
            image_features = inputs_embeds.new_zeros((batch_size, 0, inputs_embeds.shape[-1]))
        if image_features.shape[0] != batch_size:
            raise ValueError(
                f"Got {image_features.shape[0]} examples of images but {batch_size} prompts; pass one prompt per "
                "example (several images of one example go along dimension 1 of `pixel_values`)."
            )
        if attention_mask is None:
            attention_mask = torch.ones((batch_size, text_len), dtype=torch.long, device=inputs_embeds.device)
        if attention_mask.shape != (batch_size, text_len):
            raise ValueError(
                f"`attention_mask` has shape {tuple(attention_mask.shape)} but the prompts are {(batch_size, text_len)}"
            )
        attention_mask = attention_mask.to(inputs_embeds.device)
        image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
        n_visual = image_features.shape[1]
        visual_mask = torch.ones((batch_size, n_visual), dtype=attention_mask.dtype, device=attention_mask.device)
        embeds = torch.cat([image_features, inputs_embeds], dim=1)
        mask = torch.cat([visual_mask, attention_mask], dim=1)
        if self.config.is_encoder_decoder:
            self._check_padding(attention_mask, "right")
            return embeds, mask

        self._check_padding(attention_mask, "left")
        n_pad = text_len - attention_mask.sum(dim=1, keepdim=True)  # (batch, 1)
        if not bool(n_pad.any()):
            return embeds, mask
        # Move each row's padding in front of the visual prefix. Packed position p takes, from [visual | text]:
        # a padding token (text index p) for p < n_pad, visual token p - n_pad next, then text index p - n_visual.
        position = torch.arange(n_visual + text_len, device=embeds.device).unsqueeze(0)
        source = torch.where(
            position < n_pad, n_visual + position, torch.where(position < n_pad + n_visual, position - n_pad, position)
        )
        embeds = embeds.gather(1, source.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
        mask = (position >= n_pad).to(attention_mask.dtype)
        return embeds, mask

    def _llm_accepts(self, name: str) -> bool:
        # A PEFT wrapper (LoRA training) forwards keyword arguments to the model it wraps: ask that model.
        base = getattr(self.language_model, "get_base_model", None)
        llm = base() if callable(base) else self.language_model
        return name in inspect.signature(llm.forward).parameters

    def _images_and_prompt(self, pixel_values, image_embeds, input_ids, inputs_embeds, interpolate_pos_encoding):
        """The projected image queries (None without an image) and the prompt ids (empty without a prompt)."""
        has_image = pixel_values is not None or image_embeds is not None
        if input_ids is None and inputs_embeds is None:
            if not has_image:
                raise ValueError(
                    "Pass an image (`pixel_values` or `image_embeds`), a prompt (`input_ids` or `inputs_embeds`), or "
                    "both; got none of them."
                )
            batch = (pixel_values if pixel_values is not None else image_embeds).shape[0]
            input_ids = torch.zeros((batch, 0), dtype=torch.long, device=self.query_tokens.device)
        image_features = None
        if has_image:
            image_features = self.get_image_features(pixel_values, image_embeds, interpolate_pos_encoding)
        return image_features, input_ids

    @staticmethod
    def _position_ids(mask: torch.Tensor) -> torch.Tensor:
        # Positions count real tokens only, as for an unpadded example; padding gets position 0 (it is masked).
        return (mask.long().cumsum(-1) - 1).clamp(min=0)

    # ---------------------------------------------------------------- forward / generate
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MBlipOutput | tuple:
        r"""
        Args:
            pixel_values (`(batch, [n_images,] 3, H, W)`): the images; several per example are concatenated. `None`
                (with no `image_embeds`) runs the LLM on the text alone.
            input_ids (`(batch, seq)`): see the class docstring for each LLM family's contract. May be omitted for
                an empty prompt.
            labels (`(batch, target_len)` or `(batch, seq)`): target ids with -100 where no loss is taken.
            image_embeds: precomputed ViT outputs instead of `pixel_values`.
            kwargs: passed to the LLM, except `num_items_in_batch` (from the Trainer under gradient accumulation):
                with it the loss is the sum over target tokens divided by it, for both LLM families.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        image_features, input_ids = self._images_and_prompt(
            pixel_values, image_embeds, input_ids, inputs_embeds, interpolate_pos_encoding
        )
        embeds, mask = self._build_llm_inputs(image_features, input_ids, attention_mask, inputs_embeds)

        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if self.config.is_encoder_decoder:
            # Step 4 (encoder-decoder): the LLM encodes [visual | prompt] and decodes the target.
            if labels is not None and decoder_input_ids is None:
                decoder_input_ids = self.language_model.prepare_decoder_input_ids_from_labels(labels=labels)
            outputs = self.language_model(
                inputs_embeds=embeds,
                attention_mask=mask,
                decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_attention_mask,
                return_dict=True,
                **kwargs,
            )
            logits = outputs.logits
            loss = None
            if labels is not None:
                # The loss is ours, not T5's: T5 ignores `num_items_in_batch` and returns each micro-batch's mean, so
                # under gradient accumulation the Trainer (which no longer divides by the steps once a model takes
                # loss kwargs) would sum K means. A sum over the whole accumulated batch's token count is exact.
                loss = fixed_cross_entropy(
                    logits.flatten(0, 1), labels.to(logits.device).flatten(), num_items_in_batch, IGNORE_INDEX
                )
        else:
            # Step 4 (decoder-only): the LLM reads [padding | visual | prompt + target].
            text_len = (input_ids if inputs_embeds is None else inputs_embeds).shape[1]
            # Only the text positions (and the last visual one, which predicts the first text token) need logits;
            # without an image nothing predicts the first text token.
            kept = min(text_len + 1, embeds.shape[1])
            llm_kwargs = dict(inputs_embeds=embeds, attention_mask=mask, return_dict=True)
            if self._llm_accepts("position_ids"):
                llm_kwargs["position_ids"] = self._position_ids(mask)
            if self._llm_accepts("logits_to_keep"):
                llm_kwargs["logits_to_keep"] = kept
            outputs = self.language_model(**llm_kwargs, **kwargs)
            logits = outputs.logits[:, -kept:]
            loss = None
            if labels is not None:
                if labels.shape != (embeds.shape[0], text_len):
                    raise ValueError(
                        f"For a decoder-only LLM `labels` must have the shape of `input_ids` "
                        f"{(embeds.shape[0], text_len)}, got {tuple(labels.shape)}"
                    )
                labels = labels.to(logits.device)
                if attention_mask is not None:
                    labels = labels.masked_fill(attention_mask.to(labels.device) == 0, IGNORE_INDEX)
                # The visual prefix never counts: its one kept position is labelled -100.
                ignore = torch.full_like(labels[:, : kept - text_len], IGNORE_INDEX)
                loss = self.language_model.loss_function(
                    logits=logits,
                    labels=torch.cat([ignore, labels], dim=1),
                    vocab_size=logits.shape[-1],
                    num_items_in_batch=num_items_in_batch,
                )
            logits = logits[:, kept - text_len :]

        output = MBlipOutput(loss=loss, logits=logits, image_features=image_features, language_model_outputs=outputs)
        return output if return_dict else output.to_tuple()

    def _merge_generation_config(self, generation_config, generate_kwargs: dict):
        """The call's settings over `generation_config` over `self.generation_config`, unset ones left unset.

        The LLM's generate would otherwise start from its own generation config and drop this model's (the
        repository's generation_config.json and run-time edits). transformers' global defaults are left for the LLM's
        generate to fill in, so that it still tells a default `max_length` from one that was asked for.
        """
        base = generation_config if generation_config is not None else GenerationConfig()
        merged = GenerationConfig.from_dict(base.to_dict())
        merged.update(**self.generation_config.to_dict(), defaults_only=True, allow_custom_entries=True)
        llm_kwargs = merged.update(**generate_kwargs)
        return merged, llm_kwargs

    # Generation arguments whose decoding needs a second model to read the same inputs as the LLM.
    _assistant_arguments = ("assistant_model", "assistant_tokenizer", "assistant_early_exit")

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        generation_config=None,
        **generate_kwargs,
    ):
        """Generates through the LLM's own `generate` (greedy, beam search, sampling, ...), batched.

        Decoding settings come, by priority, from the keyword arguments, then `generation_config` if passed, then
        `self.generation_config` (the repository's generation_config.json, or mBLIP's captioning defaults), then
        transformers' defaults; the LLM's own generation config only fills what none of these sets.

        Returns only the newly generated tokens, for both LLM families (the encoder-decoder start token is dropped),
        so `processor.batch_decode(output, skip_special_tokens=True)` is the answer. With
        `return_dict_in_generate=True` the same holds for `output.sequences`. Without an image (`pixel_values` and
        `image_embeds` both None) the LLM continues the prompt alone.

        Prompt-lookup decoding (`prompt_lookup_num_tokens=`) works for a batch of one; it looks up n-grams in the
        tokens generated so far, as the prompt reaches the LLM as embeddings. Assisted decoding (`assistant_model=`)
        is refused: see the error.
        """
        assisted = sorted(name for name in self._assistant_arguments if generate_kwargs.get(name) is not None)
        if assisted:
            raise ValueError(
                f"mBLIP cannot use assisted decoding (got {assisted}): its LLM reads the image as query embeddings "
                "in front of the prompt, which an assistant model cannot read. Use prompt-lookup decoding "
                "(`prompt_lookup_num_tokens=`, batch of one) or plain decoding instead."
            )
        if hasattr(self.language_model, "_hf_hook"):
            # Under a device map, let the LLM return its outputs where its inputs came from.
            self.language_model._hf_hook.io_same_device = True
        image_features, input_ids = self._images_and_prompt(
            pixel_values, image_embeds, input_ids, inputs_embeds, interpolate_pos_encoding
        )
        embeds, mask = self._build_llm_inputs(image_features, input_ids, attention_mask, inputs_embeds)
        if generate_kwargs.get("prompt_lookup_num_tokens") is not None and embeds.shape[0] != 1:
            raise ValueError(
                f"Prompt-lookup decoding works for a batch of one; got a batch of {embeds.shape[0]}. Generate one "
                "example at a time, or drop `prompt_lookup_num_tokens`."
            )
        generation_config, llm_kwargs = self._merge_generation_config(generation_config, generate_kwargs)
        outputs = self.language_model.generate(
            inputs_embeds=embeds, attention_mask=mask, generation_config=generation_config, **llm_kwargs
        )
        if self.config.is_encoder_decoder:
            if isinstance(outputs, torch.Tensor):
                return outputs[:, 1:]
            outputs.sequences = outputs.sequences[:, 1:]
        return outputs


__all__ = ["MBlipForConditionalGeneration", "MBlipPreTrainedModel", "MBlipOutput"]
