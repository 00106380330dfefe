"""What makes a `train_mblip.py` run resumable and its output_dir safe to rerun into.

- **Complete checkpoints only.** The Trainer writes `checkpoint-N/` file by file and `trainer_state.json` last; a kill
  or a full disk before that leaves a folder that `get_last_checkpoint` would still pick. `last_complete_checkpoint`
  counts a checkpoint only when its `trainer_state.json` parses and names step N, and its weights file is there;
  incomplete ones are removed (they are ours: `checkpoint-*` under output_dir) with a log line.
- **Same run or refuse.** `.mblip/run.json` records the run's fingerprint: the arguments that decide the trained
  weights and the identity of the data files (path, size, and a hash of their first and last MiB). A rerun into the
  same output_dir with other data or settings is refused with the differences, pointing to `--overwrite`.
- **A finished run stays finished.** `.mblip/done.json` is written after the export; a rerun of the same run does
  nothing, and a run killed during its export re-exports from its last checkpoint without training again.
- **Never over a user's files.** `.mblip/written.json` lists every file an export wrote. A new export replaces all of
  them (no stale `model.safetensors` beside new shards, no orphan shards) and refuses to overwrite or delete any file
  it did not write.
- **Bookkeeping that survives a resume.** `RunBookkeeping` counts rows whose image fails to decode during training
  (each row once, by row index, across data-loading workers and processes), fails the run past `--max_bad_rows`, and
  keeps the running sum of the training loss, so that `train_loss` after a resume is the whole run's mean. Its state
  travels inside each checkpoint's `trainer_state.json` (transformers' `ExportableState`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from mblip.outputs import atomic_write_json, read_json, settings_differences


logger = logging.getLogger("train_mblip")

RUN_DIR = ".mblip"
RUN_FILE = "run.json"
DONE_FILE = "done.json"
MANIFEST_FILE = "written.json"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
OVERWRITE_FLAG = "--overwrite"

# Arguments that change only where or how often things are written, logged or evaluated, never the trained weights.
OUTPUT_ONLY = {
    "model": {"lora_output", "max_shard_size", "license"},
    "data": {
        "preprocessing_num_workers",
        "image_features_cache",
        "validation_file",
        "validation_split",
        "max_eval_samples",
        "max_bad_rows",
    },
}
OUTPUT_ONLY_TRAINING_PREFIXES = (
    "output_dir",
    "overwrite",
    "logging_",
    "log_",
    "report_to",
    "run_name",
    "project",
    "trackio_",
    "disable_tqdm",
    "save_",
    "eval_",
    "per_device_eval_batch_size",
    "prediction_loss_only",
    "push_to_hub",
    "hub_",
    "resume_from_checkpoint",
    "dataloader_num_workers",
    "dataloader_pin_memory",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
    "dataloader_multiprocessing_context",
    "local_rank",
    "ddp_timeout",
    "do_",
    "include_",
    "skip_memory_metrics",
    "batch_eval_metrics",
    "torch_empty_cache_steps",
    "debug",
)


# ------------------------------------------------------------------------------------------------ checkpoints
def checkpoint_problem(path: str | os.PathLike, weights_name: str) -> str:
    """'' for a complete checkpoint, else what is missing (the Trainer writes trainer_state.json last)."""
    path = Path(path)
    state_path = path / "trainer_state.json"
    if not state_path.is_file():
        return "no trainer_state.json (the save was interrupted)"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        return f"trainer_state.json is incomplete ({err})"
    match = CHECKPOINT_PATTERN.match(path.name)
    if match and state.get("global_step") != int(match.group(1)):
        return f"trainer_state.json is for step {state.get('global_step')}, not {match.group(1)}"
    if not (path / weights_name).is_file():
        return f"no {weights_name}"
    return ""


def last_complete_checkpoint(output_dir: str | os.PathLike, weights_name: str, remove: bool) -> str | None:
    """The newest complete `checkpoint-N` in output_dir; incomplete ones are skipped (and removed when `remove`)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = sorted(
        (int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))
    )
    complete = None
    for _, path in found:
        problem = checkpoint_problem(path, weights_name)
        if not problem:
            complete = path
            continue
        logger.warning("Skipping the incomplete checkpoint %s: %s%s", path, problem, "; removing it" if remove else "")
        if remove:
            shutil.rmtree(path, ignore_errors=True)
    return str(complete) if complete is not None else None


def read_checkpoint_state(checkpoint: str | os.PathLike) -> dict:
    return read_json(Path(checkpoint) / "trainer_state.json")


# ------------------------------------------------------------------------------------------------ run fingerprint
def file_identity(path: str | os.PathLike, chunk: int = 1 << 20) -> dict:
    """A data file's identity without reading all of it: path, size and a hash of its first and last MiB."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(chunk))
        if size > chunk:
            handle.seek(max(chunk, size - chunk))
            digest.update(handle.read(chunk))
    return {"path": str(path.resolve()), "size": size, "sha256_first_last_mib": digest.hexdigest()}


def _plain(value):
    return json.loads(json.dumps(value, default=str))


def run_fingerprint(model_args, data_args, training_args) -> dict:
    """The arguments that decide the trained weights, and the identity of the data files."""
    model = {k: v for k, v in asdict(model_args).items() if k not in OUTPUT_ONLY["model"]}
    data = {k: v for k, v in asdict(data_args).items() if k not in OUTPUT_ONLY["data"]}
    if data_args.train_file:
        from .training_data import data_files  # several files or globs: each file's identity

        files = data_files(data_args.train_file)
        identities = [file_identity(f) for f in files]
        data["train_file"] = identities[0] if len(identities) == 1 else identities
    training = {k: v for k, v in training_args.to_dict().items() if not k.startswith(OUTPUT_ONLY_TRAINING_PREFIXES)}
    training["world_size"] = training_args.world_size
    return _plain({"model": model, "data": data, "training": training})


def prepare_output_dir(output_dir: str | os.PathLike, fingerprint: dict, overwrite: bool, is_main: bool) -> dict:
    """Checks (main process: also writes) output_dir's run record before anything trains. Returns
    {"finished": bool}: True when output_dir already holds this exact run, exported."""
    run_dir = Path(output_dir) / RUN_DIR
    run_file, done_file = run_dir / RUN_FILE, run_dir / DONE_FILE
    if overwrite:
        if is_main:
            for path in Path(output_dir).glob("checkpoint-*"):
                if path.is_dir() and CHECKPOINT_PATTERN.match(path.name):
                    shutil.rmtree(path)
            shutil.rmtree(Path(output_dir) / "init", ignore_errors=True)
            for path in (run_file, done_file):
                path.unlink(missing_ok=True)
            logger.warning("%s: starting over in %s (old checkpoints removed)", OVERWRITE_FLAG, output_dir)
    elif run_file.is_file():
        old = read_json(run_file).get("fingerprint", {})
        diffs = settings_differences(old, fingerprint)
        if diffs:
            raise ValueError(
                f"{output_dir} holds a train_mblip.py run with other data or settings; resuming it would train on a "
                "mix of both:\n  " + "\n  ".join(diffs[:20]) + f"\nRerun with the same arguments to resume it, choose "
                f"another --output_dir, or pass {OVERWRITE_FLAG} to start over (its checkpoints are deleted; files "
                "you put there yourself are kept)."
            )
    elif any(Path(output_dir).glob("checkpoint-*")):
        logger.warning("%s has checkpoints but no run record (an older train_mblip.py): resuming unchecked", output_dir)
    if is_main and (overwrite or not run_file.is_file()):
        atomic_write_json(run_file, {"fingerprint": fingerprint})
    return {"finished": done_file.is_file() and not overwrite}


def mark_finished(output_dir: str | os.PathLike, info: dict) -> None:
    atomic_write_json(Path(output_dir) / RUN_DIR / DONE_FILE, info)


# ------------------------------------------------------------------------------------------------ export manifest
def _files_under(root: Path) -> list[str]:
    if root.is_file() or root.is_symlink():
        return [root.name]
    return sorted(str(p.relative_to(root.parent)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def written_files(output_dir: str | os.PathLike) -> set[str]:
    path = Path(output_dir) / RUN_DIR / MANIFEST_FILE
    return set(read_json(path)["files"]) if path.is_file() else set()


def user_files(output_dir: str | os.PathLike, names) -> list[str]:
    """Files under output_dir/<name> for each name that an export did not write (the user's own)."""
    output_dir, ours = Path(output_dir), written_files(output_dir)
    found = []
    for name in names:
        target = output_dir / name
        if target.exists() or target.is_symlink():
            found += [f for f in _files_under(target) if f not in ours]
    return sorted(found)


# Names an export may write at the top of output_dir, known before training: checked then, so that a run does not
# train for hours and then refuse to write its output.
EXPORT_NAMES = (
    "README.md",
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter",
    "vision_stack.safetensors",
    "data_report.json",
    "generation_config.json",
)


def refuse_user_files(output_dir: str | os.PathLike, names) -> None:
    found = user_files(output_dir, names)
    if found:
        raise FileExistsError(
            f"{output_dir} holds files that train_mblip.py did not write and its export would overwrite or delete: "
            f"{found[:10]}. Training never touches your own files: move them away or choose another --output_dir."
        )


def replace_export(staging: str | os.PathLike, output_dir: str | os.PathLike, move_into) -> list[str]:
    """Moves a finished export from `staging` into output_dir, replacing every file an earlier export wrote (stale
    weights included) and refusing to touch any file it did not write. Returns the files written."""
    staging, output_dir = Path(staging), Path(output_dir)
    names = sorted(p.name for p in staging.iterdir())
    refuse_user_files(output_dir, names)
    new = {f for name in names for f in _files_under(staging / name)}
    stale = sorted(written_files(output_dir) - new)
    for name in sorted(stale, key=lambda f: f != "config.json"):  # config.json first: no longer looks complete
        path = output_dir / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            parent = path.parent
            while parent != output_dir and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
    move_into(staging, output_dir)
    atomic_write_json(output_dir / RUN_DIR / MANIFEST_FILE, {"files": sorted(new)})
    if stale:
        logger.info("Removed %d files of an earlier export: %s", len(stale), stale[:10])
    return sorted(new)


# ------------------------------------------------------------------------------------------------ bookkeeping
class RunBookkeeping(TrainerCallback, ExportableState):
    """Decode failures by row index and the running loss sum, merged across processes at every logging, saving and
    final step, checked against --max_bad_rows, and saved in each checkpoint's trainer_state.json."""

    def __init__(self, trainer, rows: int, bad_before: int, max_bad_rows: float):
        self.trainer, self.rows, self.bad_before, self.max_bad_rows = trainer, rows, bad_before, max_bad_rows
        self.failed_rows: set[int] = set()
        self.loss_sum = 0.0  # sum over optimizer steps of the loss the Trainer logs, up to `loss_step`
        self.loss_step = 0
        self.resumed_loss_sum, self.resumed_step = 0.0, 0

    def state(self) -> dict:
        return {
            "args": {},
            "attributes": {
                "failed_rows": sorted(self.failed_rows),
                "loss_sum": self.loss_sum,
                "loss_step": self.loss_step,
            },
        }

    def restore(self, saved: dict | None):
        attributes = (saved or {}).get("attributes") or {}
        self.failed_rows = set(attributes.get("failed_rows", []))
        self.loss_sum = float(attributes.get("loss_sum", 0.0))
        self.loss_step = int(attributes.get("loss_step", 0))
        self.resumed_loss_sum, self.resumed_step = self.loss_sum, self.loss_step

    def on_train_begin(self, args, state, control, **kwargs):
        name = type(self).__name__
        saved = state.stateful_callbacks.get(name)
        if state.global_step > 0:  # resumed: the checkpoint's state (none from an older train_mblip.py)
            self.restore(saved if isinstance(saved, dict) else None)
        state.stateful_callbacks[name] = self.state()

    def sync(self, state):
        """Merges every process's new failures and losses (a collective: all processes call it at the same step)."""
        from accelerate.utils import gather_object

        pending_failed, pending_loss = self.trainer.take_pending()
        gathered = gather_object([(pending_failed, pending_loss)])
        for failed, _ in gathered:
            self.failed_rows.update(failed)
        self.loss_sum += sum(loss for _, loss in gathered) / len(gathered)
        self.loss_step = state.global_step
        self.check()

    def check(self):
        bad = self.bad_before + len(self.failed_rows)
        if self.rows and bad / self.rows > self.max_bad_rows:
            raise ValueError(
                f"{bad} of {self.rows} training rows ({bad / self.rows:.1%}) are unusable, more than --max_bad_rows "
                f"{self.max_bad_rows}: {self.bad_before} found before training and {len(self.failed_rows)} whose "
                f"image failed to decode during training (rows {sorted(self.failed_rows)[:10]}); see the warnings"
            )

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_log or control.should_save or control.should_training_stop:
            self.sync(state)

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save or control.should_log:
            self.sync(state)

    def train_loss(self, session_loss: float, global_step: int) -> float:
        """The whole run's mean loss: the Trainer's `train_loss` covers only the steps of the last (resumed) call."""
        session_steps = global_step - self.resumed_step
        return (self.resumed_loss_sum + session_loss * session_steps) / max(global_step, 1)
