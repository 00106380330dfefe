"""Model repositories: what convert_mblip.py and train_mblip.py write, written one way.

A model repository folder holds config.json with `auto_map`, safetensors weights (sharded when large), the three
remote-code files, the processor and tokenizer files, and a README.md model card. It is written into a temporary
sibling folder and renamed into place at the end, so a killed job never leaves a folder that looks complete.
"""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from transformers.dynamic_module_utils import custom_object_save

from .configuration_mblip import MBlipConfig
from .modeling_mblip import MBlipForConditionalGeneration
from .processing_mblip import MBlipProcessor


DEFAULT_MAX_SHARD_SIZE = "5GB"


def register_auto_classes():
    """Make `save_pretrained` write `auto_map` and copy the remote-code files, through transformers' own machinery."""
    MBlipConfig.register_for_auto_class()
    MBlipForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    MBlipProcessor.register_for_auto_class()


@contextlib.contextmanager
def atomic_directory(output_dir: str | os.PathLike, overwrite: bool = False):
    """Yields a temporary folder beside `output_dir` that becomes `output_dir` only if the block completes."""
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.incomplete-", dir=output_dir.parent))
    try:
        yield tmp
        if output_dir.exists():
            old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
            os.replace(output_dir, old)
            os.replace(tmp, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_model_repository(
    model: MBlipForConditionalGeneration,
    processor: MBlipProcessor,
    folder: str | os.PathLike,
    model_card: str,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    extra_files: dict[str, str] | None = None,
):
    """Writes the repository's files into an existing folder (not atomic: see `save_model_repository`)."""
    folder = Path(folder)
    register_auto_classes()
    # AutoModel gets an auto_map entry too: custom_object_save records the class under its `_auto_class` in the
    # config and copies the code; save_pretrained then adds AutoModelForImageTextToText beside it.
    MBlipForConditionalGeneration.register_for_auto_class("AutoModel")
    custom_object_save(model, folder, config=model.config)
    MBlipForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    processor.save_pretrained(folder)
    (folder / "README.md").write_text(model_card, encoding="utf-8")
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text, encoding="utf-8")


def save_model_repository(
    model: MBlipForConditionalGeneration,
    processor: MBlipProcessor,
    output_dir: str | os.PathLike,
    model_card: str,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Writes a complete, Hub-ready mBLIP model repository atomically and returns its path."""
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        write_model_repository(model, processor, tmp, model_card, max_shard_size, extra_files)
    return Path(output_dir)


def move_into(source: str | os.PathLike, destination: str | os.PathLike, last: str = "config.json"):
    """Moves a finished folder's files into an existing folder (e.g. a training run's output_dir, which also holds
    checkpoints), `last` at the end: until it lands the destination does not look like a model repository."""
    source, destination = Path(source), Path(destination)
    names = sorted(p.name for p in source.iterdir())
    for name in [n for n in names if n != last] + [n for n in names if n == last]:
        target = destination / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(source / name, target)
    source.rmdir()


def model_card(
    title: str,
    description: str,
    base_models: list[str],
    languages: list[str] | None = None,
    license: str = "mit",
    repo_id: str = "org/mblip-model",
    sections: dict[str, str] | None = None,
    model_index: str | None = None,
) -> str:
    """A model card with YAML metadata (license, languages, pipeline tag, base models) and a usage snippet."""
    lines = ["---", f"license: {license}", "library_name: transformers", "pipeline_tag: image-text-to-text"]
    if languages:
        lines.append("language:")
        lines += [f"- {json.dumps(code)}" for code in languages]  # quoted: YAML 1.1 reads a bare `no` as false
    if base_models:
        lines.append("base_model:")
        lines += [f"- {json.dumps(name)}" for name in base_models]  # a local path may hold ": "
    lines += [
        "tags:",
        "- mblip",
        "- multilingual",
        "- vision-language",
        "- image-captioning",
        "- visual-question-answering",
    ]
    if model_index:
        lines.append(model_index.rstrip())
    lines.append("---")
    body = [
        f"# {title}",
        "",
        description.strip(),
        "",
        "## Usage",
        "",
        "```python",
        "import torch",
        "from PIL import Image",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        f'model = AutoModelForImageTextToText.from_pretrained("{repo_id}", trust_remote_code=True)',
        f'processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)',
        "",
        'image = Image.open("example.jpg")',
        'inputs = processor(images=image, text="Caption the image in German.", return_tensors="pt")',
        "with torch.no_grad():",
        "    output = model.generate(**inputs, max_new_tokens=30, num_beams=5)",
        "print(processor.batch_decode(output, skip_special_tokens=True)[0])",
        "```",
        "",
        "Only the language model is quantized when a bitsandbytes config is passed:",
        "",
        "```python",
        "from transformers import BitsAndBytesConfig",
        f'model = AutoModelForImageTextToText.from_pretrained("{repo_id}", trust_remote_code=True,',
        "    quantization_config=BitsAndBytesConfig(load_in_8bit=True))",
        "```",
    ]
    for heading, text in (sections or {}).items():
        body += ["", f"## {heading}", "", text.strip()]
    return "\n".join(lines + [""] + body) + "\n"
