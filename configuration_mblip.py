# Copyright 2026 The mBLIP toolkit authors. Licensed under the MIT License (see LICENSE).
"""mBLIP configuration: BLIP-2's ViT and Q-Former, re-aligned to any multilingual language model."""

from transformers import AutoConfig, PretrainedConfig
from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig, Blip2VisionConfig
from transformers.utils import logging
from transformers.utils.generic import is_flash_attention_requested


logger = logging.get_logger(__name__)

# The language model of the released mBLIP mT0-XL (bigscience/mt0-xl, an mT5-XL fine-tune).
MT0_XL_TEXT_CONFIG = {
    "model_type": "mt5",
    "vocab_size": 250112,
    "d_model": 2048,
    "d_kv": 64,
    "d_ff": 5120,
    "num_layers": 24,
    "num_decoder_layers": 24,
    "num_heads": 32,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}


def _as_config(value, default_class, name: str) -> PretrainedConfig:
    """A sub-config from a config object, a dict, or None (the default)."""
    if value is None:
        return default_class()
    if isinstance(value, PretrainedConfig):
        return value
    if isinstance(value, dict):
        return default_class(**value)
    raise ValueError(f"`{name}` must be a dict, a PretrainedConfig or None, got {type(value).__name__}: {value!r}")


def _as_text_config(value) -> PretrainedConfig:
    """The language model's config, chosen by its `model_type` like AutoConfig does."""
    if value is None:
        logger.info("`text_config` is None: using the shapes of mT0-XL, the LLM of the released mBLIP.")
        value = dict(MT0_XL_TEXT_CONFIG)
    if isinstance(value, PretrainedConfig):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"`text_config` must be a dict, a PretrainedConfig or None, got {type(value).__name__}")
    value = dict(value)
    model_type = value.pop("model_type", None)
    if model_type is None:
        raise ValueError(
            "`text_config` needs a `model_type` (e.g. 'mt5', 'bloom', 'llama') to pick the language model; "
            f"got keys {sorted(value)}"
        )
    try:
        return AutoConfig.for_model(model_type, **value)
    except ValueError as err:
        raise ValueError(f"`text_config` has model_type {model_type!r}, which transformers does not know.") from err


def attention_per_sub_config(value):
    """`attn_implementation` as one value or a dict per sub-config, with the Q-Former kept off flash attention.

    The Q-Former runs in fp32 (`_keep_in_fp32_modules`) and has no flash-attention path in transformers, so one flash
    value for the whole model gives the LLM and the ViT flash attention and leaves the Q-Former on sdpa. Asking for
    flash attention in the Q-Former by name is an error.
    """
    if isinstance(value, str) and is_flash_attention_requested(requested_attention_implementation=value):
        logger.info(f"attn_implementation={value!r}: the Q-Former has no flash-attention path and keeps 'sdpa'.")
        return {"": value, "text_config": value, "vision_config": value, "qformer_config": "sdpa"}
    if isinstance(value, dict):
        qformer = value.get("qformer_config")
        if isinstance(qformer, str) and is_flash_attention_requested(requested_attention_implementation=qformer):
            raise ValueError(
                f"attn_implementation['qformer_config']={qformer!r}: the Q-Former runs in fp32 and has no "
                "flash-attention path; pass 'sdpa' or 'eager' for it (flash attention can go to 'text_config' and "
                "'vision_config')."
            )
        unknown = sorted(set(value) - {"", "text_config", "vision_config", "qformer_config"})
        if unknown:
            raise ValueError(
                f"attn_implementation has keys {unknown}; mBLIP's sub-configs are 'text_config', 'vision_config' "
                "and 'qformer_config' ('' is the top level)."
            )
    return value


class MBlipConfig(PretrainedConfig):
    r"""
    Configuration of [`MBlipForConditionalGeneration`]: a BLIP-2 vision encoder and Q-Former whose query outputs are
    linearly projected into the input embeddings of a (multilingual) language model.

    Args:
        vision_config (`dict` or `Blip2VisionConfig`, *optional*):
            The ViT. Defaults to BLIP-2's EVA ViT-g at 224 px.
        qformer_config (`dict` or `Blip2QFormerConfig`, *optional*):
            The Q-Former. Defaults to BLIP-2's (hidden size 768). Its `encoder_hidden_size` follows the ViT.
        text_config (`dict` or `PretrainedConfig`, *optional*):
            Any transformers language-model config, chosen by its `model_type`: encoder-decoder (mt5, t5) or
            decoder-only (bloom, llama, qwen2, gemma, ...). Defaults to the shapes of mT0-XL.
        num_query_tokens (`int`, *optional*, defaults to 32):
            Learned query tokens; each image becomes this many LLM input embeddings.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation for the freshly initialised language projection.
        attn_implementation (`str` or `dict`, *optional*):
            One value for every sub-model, or a dict per sub-config, e.g.
            `{"text_config": "flash_attention_2", "vision_config": "sdpa", "qformer_config": "eager"}`. One flash value
            leaves the Q-Former (fp32, no flash path) on sdpa.

    The LLM family is derived from the config (`text_config.is_encoder_decoder`), never from a checkpoint's name.

    Example:

    ```python
    >>> from transformers import BloomConfig
    >>> config = MBlipConfig(text_config=BloomConfig(hidden_size=64, n_layer=2, n_head=4))
    >>> config.is_encoder_decoder
    False
    ```
    """

    model_type = "mblip"
    sub_configs = {"vision_config": Blip2VisionConfig, "qformer_config": Blip2QFormerConfig, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config=None,
        qformer_config=None,
        text_config=None,
        num_query_tokens: int = 32,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.vision_config = _as_config(vision_config, Blip2VisionConfig, "vision_config")
        self.qformer_config = _as_config(qformer_config, Blip2QFormerConfig, "qformer_config")
        self.text_config = _as_text_config(text_config)
        if not isinstance(num_query_tokens, int) or num_query_tokens < 1:
            raise ValueError(f"`num_query_tokens` must be a positive int, got {num_query_tokens!r}")
        self.num_query_tokens = num_query_tokens
        self.initializer_range = initializer_range
        # The Q-Former cross-attends to the ViT's patch embeddings, so their widths must agree.
        self.qformer_config.encoder_hidden_size = self.vision_config.hidden_size
        # Derived, not stored: the family is whatever the text config says.
        kwargs.pop("is_encoder_decoder", None)
        kwargs.pop("use_decoder_only_language_model", None)
        super().__init__(**kwargs)

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(self.text_config.is_encoder_decoder)

    @is_encoder_decoder.setter
    def is_encoder_decoder(self, value):
        # PretrainedConfig assigns a default during __init__; the text config stays the source of truth.
        pass

    @property
    def use_decoder_only_language_model(self) -> bool:
        """Name kept from transformers' Blip2Config."""
        return not self.is_encoder_decoder

    def get_text_config(self, *args, **kwargs) -> PretrainedConfig:
        return self.text_config

    @property
    def _attn_implementation(self):
        return self._attn_implementation_internal

    @_attn_implementation.setter
    def _attn_implementation(self, value):
        # Every route (the constructor, from_pretrained, _from_config) sets attention through this setter, which
        # PretrainedConfig spreads over the sub-configs.
        PretrainedConfig._attn_implementation.fset(self, attention_per_sub_config(value))


__all__ = ["MBlipConfig", "attention_per_sub_config"]
