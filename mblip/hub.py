"""Model repositories: what convert_mblip.py and train_mblip.py write, written one way.

A model repository folder holds config.json with `auto_map`, safetensors weights (sharded when large), the three
remote-code files, the processor and tokenizer files, and a README.md model card (built by mblip/cards.py). It is
written into a temporary sibling folder and renamed into place at the end, so a killed job never leaves a folder that
looks complete. Loading-time keys (`is_local`, `local_files_only`, ...) that transformers keeps from `from_pretrained`
are removed from the saved JSON files: a repository records what the model is, not how it was once loaded.
"""

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import ModelCard
from transformers.dynamic_module_utils import custom_object_save

from .configuration_mblip import MBlipConfig
from .modeling_mblip import MBlipForConditionalGeneration
from .processing_mblip import MBlipProcessor


logger = logging.getLogger(__name__)


DEFAULT_MAX_SHARD_SIZE = "5GB"
# Arguments of from_pretrained that tokenizers and processors keep in their init kwargs and would save again.
LOADING_KEYS = frozenset(
    {
        "is_local",
        "local_files_only",
        "cache_dir",
        "force_download",
        "resume_download",
        "proxies",
        "token",
        "use_auth_token",
        "revision",
        "subfolder",
        "trust_remote_code",
        "_commit_hash",
        "_from_auto",
        "_from_pipeline",
    }
)


def register_auto_classes():
    """Make `save_pretrained` write `auto_map` and copy the remote-code files, through transformers' own machinery."""
    MBlipConfig.register_for_auto_class()
    MBlipForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    MBlipProcessor.register_for_auto_class()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def remove_stale_directories(output_dir: str | os.PathLike) -> list[Path]:
    """Deletes the hidden temporaries a killed `atomic_directory` left beside `output_dir` (full-size copies of a
    model) and logs each; those of a process still running are kept. Returns what was removed."""
    output_dir = Path(output_dir)
    removed = []
    for kind in ("incomplete", "old"):
        for stale in sorted(output_dir.parent.glob(f".{output_dir.name}.{kind}-*")):
            pid = stale.name[len(f".{output_dir.name}.{kind}-") :].split("-")[0]
            if not stale.is_dir() or (pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid))):
                continue
            shutil.rmtree(stale, ignore_errors=True)
            logger.warning("Removed %s, left behind by an interrupted write of %s", stale, output_dir)
            removed.append(stale)
    return removed


@contextlib.contextmanager
def atomic_directory(output_dir: str | os.PathLike, overwrite: bool = False):
    """Yields a temporary folder beside `output_dir` that becomes `output_dir` only if the block completes."""
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_directories(output_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.incomplete-{os.getpid()}-", dir=output_dir.parent))
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
    card: ModelCard,
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
    remove_loading_keys(folder)
    card.save(folder / "README.md")
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text, encoding="utf-8")


def remove_loading_keys(folder: str | os.PathLike) -> list[str]:
    """Drops `LOADING_KEYS` from the JSON files transformers saved in `folder` (not from the tokenizer's own
    tokenizer.json, nor from weight indexes); returns the files changed."""
    changed = []
    for path in sorted(Path(folder).glob("*.json")):
        if path.name == "tokenizer.json" or path.name.endswith(".index.json"):
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        if _drop_keys(data):
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            changed.append(path.name)
    return changed


def _drop_keys(data) -> bool:
    if not isinstance(data, dict):
        return False
    found = [key for key in data if key in LOADING_KEYS]
    for key in found:
        del data[key]
    nested = [_drop_keys(value) for value in data.values()]
    return bool(found) or any(nested)


def save_model_repository(
    model: MBlipForConditionalGeneration,
    processor: MBlipProcessor,
    output_dir: str | os.PathLike,
    card: ModelCard,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Writes a complete, Hub-ready mBLIP model repository atomically and returns its path."""
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        write_model_repository(model, processor, tmp, card, max_shard_size, extra_files)
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
