"""Loading a model for inference: the dtype table, the bitsandbytes config, the device, and the loader itself.

    from mblip.loading import load_for_inference

    model, processor = load_for_inference("Gregor/mblip-mt0-xl", dtype="auto", load_in_8bit=True)

predict.py, app.py and `python -m eval` load through `load_for_inference`; training builds its QLoRA config with
`get_quantization_config` and convert_mblip.py names dtypes with `resolve_dtype`, so every script reads `--dtype`,
`--load_in_8bit`, `--load_in_4bit` and `--device` the same way (TRL's `ModelConfig` + `get_quantization_config`).

dtype names: float32, bfloat16, float16 and auto. **auto means bfloat16 on a CUDA GPU that supports it, and float32
everywhere else** (CPU, older GPUs, other devices). It never means "the checkpoint's own dtype" (transformers'
`dtype="auto"`): the same command computes in the same precision whatever dtype a checkpoint was saved in. Older
GPUs get float32 rather than float16 because T5-family LLMs (mT0, the paper's mBLIP mT0-XL) overflow in float16.

Quantization applies to the LLM only: `MBlipForConditionalGeneration.from_pretrained` keeps the ViT, Q-Former,
query tokens and projection in `dtype` unless the config names its own `llm_int8_skip_modules`.
"""

from __future__ import annotations

import logging

import torch
from transformers import BitsAndBytesConfig


logger = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
DTYPE_HELP = "auto: bfloat16 on a CUDA GPU that supports it, else float32 (not the checkpoint's own dtype)"
BNB_4BIT_QUANT_TYPES = ("nf4", "fp4")


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """The device asked for (checked to exist), or cuda when there is a GPU, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r} was asked for but CUDA is not available here")
    return chosen


def resolve_dtype(name: str, device: str | torch.device | None = None) -> torch.dtype:
    """A name from DTYPES -> the torch dtype; "auto" depends on `device` (default: choose_device()'s), see above."""
    if name not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {name!r}")
    if name != "auto":
        return getattr(torch, name)
    device = choose_device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def get_quantization_config(
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    *,
    bnb_4bit_quant_type: str = "nf4",
    bnb_4bit_compute_dtype: torch.dtype = torch.float32,
    bnb_4bit_use_double_quant: bool = False,
) -> BitsAndBytesConfig | None:
    """The bitsandbytes config for an 8-bit or 4-bit LLM, or None for neither. The 4-bit settings are explicit:
    inference uses NF4 without double quantization, QLoRA training (mblip/training.py) with it."""
    if load_in_8bit and load_in_4bit:
        raise ValueError("Choose one of --load_in_8bit and --load_in_4bit, not both")
    if load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    if not load_in_4bit:
        return None
    if bnb_4bit_quant_type not in BNB_4BIT_QUANT_TYPES:
        raise ValueError(f"--bnb_4bit_quant_type must be one of {BNB_4BIT_QUANT_TYPES}, got {bnb_4bit_quant_type!r}")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=bnb_4bit_quant_type,
        bnb_4bit_compute_dtype=bnb_4bit_compute_dtype,
        bnb_4bit_use_double_quant=bnb_4bit_use_double_quant,
    )


def describe_quantization(load_in_8bit: bool = False, load_in_4bit: bool = False) -> str:
    return "8-bit LLM" if load_in_8bit else "4-bit LLM" if load_in_4bit else "not quantized"


def load_for_inference(
    model_name_or_path: str,
    dtype: str = "auto",
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    device: str | torch.device | None = None,
    *,
    bnb_4bit_quant_type: str = "nf4",
    bnb_4bit_use_double_quant: bool = False,
):
    """(model in eval mode on `device`, processor) of an mBLIP folder or Hub id. The LLM alone is quantized when
    asked (4-bit computes in the resolved dtype); user errors are ValueErrors of one line."""
    from transformers import AutoConfig

    from mblip.modeling_mblip import MBlipForConditionalGeneration
    from mblip.processing_mblip import MBlipProcessor

    target = choose_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    quantization = get_quantization_config(
        load_in_8bit,
        load_in_4bit,
        bnb_4bit_quant_type=bnb_4bit_quant_type,
        bnb_4bit_compute_dtype=torch_dtype,
        bnb_4bit_use_double_quant=bnb_4bit_use_double_quant,
    )
    try:
        config = AutoConfig.from_pretrained(model_name_or_path)
    except (OSError, ValueError) as err:  # the hub client raises these for offline, unknown and malformed ids
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"--model {model_name_or_path!r} is neither a model folder nor a reachable Hub id ({reason})"
        ) from None
    if config.model_type != "mblip":
        hint = (
            " (convert it: python convert_mblip.py --from_blip2 SRC --output_dir DIR)"
            if config.model_type == "blip-2"
            else ""
        )
        raise ValueError(f"--model {model_name_or_path!r} has model_type {config.model_type!r}; expected 'mblip'{hint}")
    logger.info(
        "Loading %s (dtype %s, %s) on %s",
        model_name_or_path,
        str(torch_dtype).replace("torch.", ""),
        describe_quantization(load_in_8bit, load_in_4bit),
        target,
    )
    model = MBlipForConditionalGeneration.from_pretrained(
        model_name_or_path,
        dtype=torch_dtype,
        quantization_config=quantization,
        device_map={"": target},  # one device, so that bitsandbytes quantizes straight onto it
    )
    processor = MBlipProcessor.from_pretrained(model_name_or_path)
    return model.eval(), processor
