"""LoRA adapters that reload to the trained model: `--lora_output merged_and_adapter` and `--lora_output adapter`.

mBLIP trains more than LoRA: the Q-Former, the query tokens and the projection (and the ViT on request) change too.
An adapter holding only LoRA weights would reload onto the *untrained* vision stack and silently give another model.
So every adapter written here is complete:

- the trained modules (qformer, language_projection, vision_model when it trains) go through peft's own
  `modules_to_save`, so `PeftModel.from_pretrained` puts them back;
- the query tokens are a bare `nn.Parameter` of the top model, which `modules_to_save` cannot wrap (it takes
  modules only). They are stored in the adapter's weights under their model key (`base_model.model.query_tokens`),
  which peft's loader (`set_peft_model_state_dict`) loads into the model with the adapter weights;
- `base_model_name_or_path` in adapter_config.json is the run's starting point as an absolute path (or its Hub id),
  so the adapter loads from any working directory.

Reload (peft and transformers only; the base repository ships its remote code):

    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForImageTextToText

    adapter = "runs/mblip/adapter"
    base_path = PeftConfig.from_pretrained(adapter).base_model_name_or_path
    base = AutoModelForImageTextToText.from_pretrained(base_path, trust_remote_code=True)
    model = PeftModel.from_pretrained(base, adapter).merge_and_unload()  # equals the merged export
"""

import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# Trained top-level modules that an adapter carries through peft's modules_to_save, in the model's own names.
SAVED_MODULES = ("qformer", "language_projection", "vision_model")


def _part(name: str) -> str:
    return name.removeprefix(PEFT_PREFIX)


def modules_to_save(state: dict[str, torch.Tensor]) -> list[str]:
    """The top-level modules with trained weights in `state` (a PEFT model's trainable parameters)."""
    trained = {_part(name).split(".")[0] for name in state if "lora_" not in name}
    return [module for module in SAVED_MODULES if module in trained]


def extra_parameters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Trained parameters outside LoRA and outside any module that modules_to_save can wrap (the query tokens)."""
    return {
        name: value
        for name, value in state.items()
        if "lora_" not in name and _part(name).split(".")[0] not in SAVED_MODULES
    }


def with_trained_weights(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    add_lora: Callable[[torch.nn.Module, list[str] | None], torch.nn.Module],
    complete_adapter: bool,
):
    """`model` (un-wrapped, at the run's starting point) with LoRA added by `add_lora(model, modules_to_save)` and
    the run's trained weights `state` (PEFT names) loaded.

    With `complete_adapter`, the trained vision-stack modules are loaded first and then wrapped by peft's
    `modules_to_save` (which copies them), so that `save_pretrained` writes them into the adapter; `merge_and_unload`
    gives the same model either way.
    """
    saved = modules_to_save(state) if complete_adapter else []
    if saved:
        vision_stack = {_part(name): value for name, value in state.items() if "lora_" not in name}
        result = model.load_state_dict(vision_stack, strict=False)
        if result.unexpected_keys:
            raise RuntimeError(f"Trained weights the model does not have: {result.unexpected_keys[:5]}")
        state = {name: value for name, value in state.items() if "lora_" in name}
    model = add_lora(model, saved or None)
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"Trained weights the PEFT model does not have: {result.unexpected_keys[:5]}")
    return model


def base_reference(source: str | os.PathLike) -> str:
    """What adapter_config.json names as the base: an existing local folder as an absolute path, else the Hub id."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.is_dir() else str(source)


def save_adapter(peft_model, folder: str | os.PathLike, state: dict[str, torch.Tensor], base: str) -> Path:
    """Writes a complete adapter (see the module docstring) with peft's `save_pretrained` into `folder`."""
    folder = Path(folder)
    for config in peft_model.peft_config.values():
        config.base_model_name_or_path = base
    peft_model.save_pretrained(folder)
    extra = extra_parameters(state)
    if extra:
        weights = load_file(folder / ADAPTER_WEIGHTS)
        model_state = peft_model.state_dict()
        # The values the PEFT model holds (already in the export's dtype), under the key peft's loader matches.
        weights.update({name: model_state[name].detach().cpu().contiguous() for name in extra})
        save_file(weights, folder / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    return folder
