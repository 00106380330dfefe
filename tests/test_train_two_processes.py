"""Decode failures during training and resume, with file-based data in two `accelerate launch` processes (issue 15):
each row whose image passes the up-front check but fails to decode is counted once over processes, data-loading
workers and epochs; --max_bad_rows stops both processes with the clear error; a killed run resumes to the weights of
a straight one. Tiny parts, a few steps each."""

import json
import os
import subprocess

import pytest
from test_train_mblip import cli, parts  # noqa: F401  (parts is a fixture)
from test_train_resume import same_weights, train_loss, truncated_data  # noqa: F401  (truncated_data: a fixture)


# ruff: noqa: F811  (the `parts` fixture, imported from test_train_mblip, is an argument of every test)

# Runs train_mblip.py as it is and records, per process, the rows whose image failed to decode in the batches that
# process trained on (what it hands to the cross-process gather), the last step it finished and how it ended.
RUNNER = """
import json, os, signal, sys
from transformers import TrainerCallback
from mblip import training
from test_train_mblip import Kill

record = {"failed": [], "by_step": {}, "step": 0, "error": None, "decode_failures": None}
take_pending = training.MBlipTrainer.take_pending
def recording_take_pending(self):
    failed, loss = take_pending(self)
    record["failed"].extend(failed)
    record["by_step"].setdefault(self.state.global_step, []).extend(failed)
    return failed, loss
training.MBlipTrainer.take_pending = recording_take_pending

class Steps(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        record["step"] = state.global_step

# Terminated by the launcher because the other process failed first: still write the record (the test then sees
# "SystemExit: 143" where it expects this process's own error).
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
kill = int(os.environ.get("KILL_AT", "0"))
try:
    trainer, report = training.main(sys.argv[1:], callbacks=[Steps()] + ([Kill(at=kill)] if kill else []))
    record["decode_failures"] = report["decode_failures"]
except BaseException as err:
    record["error"] = f"{type(err).__name__}: {err}"
    raise
finally:
    name = f"{os.environ['RUN_NAME']}-rank{os.environ.get('RANK', '0')}.json"
    with open(os.path.join(os.environ["RECORD_DIR"], name), "w") as f:
        json.dump(record, f)
"""


def launch(parts, tmp_path, train_file, name, *extra, kill=0, timeout=400):
    """One `accelerate launch` of two processes into tmp_path/name; (its result, each rank's record)."""
    (tmp_path / "runner.py").write_text(RUNNER)
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "RECORD_DIR": str(tmp_path),
        "RUN_NAME": name,
        "KILL_AT": str(kill),
        "PYTHONPATH": os.pathsep.join([tests, os.path.dirname(tests)]),
    }
    command = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", str(tmp_path / "runner.py")]
    command += cli(
        parts, tmp_path / name, "--data_check_cache", str(tmp_path / "checks"), *extra, train_file=train_file
    )
    # A hung process (one waiting forever in a collective the other left) fails here instead of blocking the suite.
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    records = []
    for rank in (0, 1):
        path = tmp_path / f"{name}-rank{rank}.json"
        assert path.is_file(), f"process {rank} left no record\n" + logs(result)
        records.append(json.loads(path.read_text()))
        path.unlink()  # a later launch of the same name writes its own
    return result, records


def logs(result):
    return result.stdout[-3000:] + result.stderr[-3000:]


# 11 rows, 4 per process and step: 2 steps an epoch (each process's batch keeps a good row).
BATCH = ["--per_device_train_batch_size", "4"]


def test_two_processes_count_each_decode_failure_once_and_resume_to_the_same_weights(parts, tmp_path, truncated_data):
    # 3 steps: all of epoch 1 and half of epoch 2, with a checkpoint after each step.
    extra = [*BATCH, "--max_steps", "3", "--max_bad_rows", "0.5", "--dataloader_num_workers", "1"]
    extra += ["--augment", "--lora_dropout", "0.1", "--save_strategy", "steps", "--save_steps", "1"]
    result, (rank0, rank1) = launch(parts, tmp_path, truncated_data, "straight", *extra)
    assert result.returncode == 0, logs(result)
    # Where the bad rows fell (seed 7): both processes trained on some; rows 9 and 10 failed in both epochs (9 three
    # times, on both processes); row 8 only in step 1. Each is counted once, on every process.
    by_step = [
        (int(step), rank, rows)
        for rank, record in enumerate((rank0, rank1))
        for step, rows in record["by_step"].items()
    ]
    failed = sorted((step, rank, row) for step, rank, rows in by_step for row in rows)
    assert failed == [(1, 0, 9), (1, 1, 8), (1, 1, 10), (2, 1, 9), (3, 0, 9), (3, 0, 10)], failed
    assert rank0["decode_failures"] == rank1["decode_failures"] == 3
    report = json.loads((tmp_path / "straight" / "data_report.json").read_text())
    assert report["decode_failures"] == 3 and report["decode_failure_rows"] == [8, 9, 10]
    assert (
        "and 3 more whose image failed to decode during training" in (tmp_path / "straight" / "README.md").read_text()
    )
    state = json.loads((tmp_path / "straight" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and state["epoch"] == 1.5
    # Gathered from both processes into the checkpoint of step 1.
    saved = json.loads((tmp_path / "straight" / "checkpoint-1" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["RunBookkeeping"]["attributes"]["failed_rows"] == [8, 9, 10]

    # Killed after step 2 (checkpoint-1, mid-epoch 1, is on disk), then resumed: the straight run's weights, loss and
    # counts. Row 8 fails only before the checkpoint, so only the checkpoint's bookkeeping can count it.
    result, (killed0, killed1) = launch(parts, tmp_path, truncated_data, "killed", *extra, kill=2)
    assert result.returncode != 0 and killed0["step"] == killed1["step"] == 2, logs(result)
    assert (tmp_path / "killed" / "checkpoint-1").is_dir() and not (tmp_path / "killed" / "checkpoint-2").exists()
    result, (resumed0, resumed1) = launch(parts, tmp_path, truncated_data, "killed", *extra)
    assert result.returncode == 0, logs(result)
    assert sorted(set(resumed0["failed"] + resumed1["failed"])) == [9, 10]
    assert resumed0["decode_failures"] == resumed1["decode_failures"] == 3
    resumed = json.loads((tmp_path / "killed" / "data_report.json").read_text())
    assert resumed["decode_failures"] == 3 and resumed["decode_failure_rows"] == [8, 9, 10]
    same_weights(tmp_path / "straight", tmp_path / "killed")
    assert train_loss(tmp_path / "killed") == pytest.approx(train_loss(tmp_path / "straight"), rel=1e-5)


def test_two_processes_past_max_bad_rows_stop_together_with_the_error(parts, tmp_path, truncated_data):
    # 3 of 11 rows fail to decode: more than 20%. Both processes must stop with the error, none may wait forever.
    extra = [*BATCH, "--num_train_epochs", "2", "--max_bad_rows", "0.2"]
    result, (rank0, rank1) = launch(parts, tmp_path, truncated_data, "strict", *extra)
    assert result.returncode != 0
    message = "3 of 11 training rows (27.3%) are unusable, more than --max_bad_rows 0.2"
    assert rank0["error"].startswith("ValueError: " + message), rank0["error"]
    assert rank1["error"] == rank0["error"]
    assert message in result.stderr
    # Stopped at step 1 of 4, before anything was exported: its batches held the three bad rows, which only the
    # gather across processes brings together (seed 7: row 9 on the main process, rows 8 and 10 on the other).
    assert rank0["step"] == rank1["step"] == 1
    assert sorted(rank0["failed"]) == [9] and sorted(rank1["failed"]) == [8, 10]
    assert not (tmp_path / "strict" / "config.json").exists()


def test_two_processes_step_through_batches_with_no_usable_image(parts, tmp_path, truncated_data):
    # Batch size 1: every truncated row is a batch none of whose images decodes, on one process while the other has a
    # usable row. The empty side still runs a forward and backward (on a placeholder that adds zero), so the gradient
    # all-reduce finds both processes and the run ends normally instead of stopping or hanging.
    extra = ["--per_device_train_batch_size", "1", "--max_steps", "6", "--max_bad_rows", "0.5"]
    result, (rank0, rank1) = launch(parts, tmp_path, truncated_data, "single", *extra)
    assert result.returncode == 0, logs(result)
    assert sorted(set(rank0["failed"] + rank1["failed"])) == [8, 9, 10], (rank0["by_step"], rank1["by_step"])
    assert rank0["decode_failures"] == rank1["decode_failures"] == 3
    state = json.loads((tmp_path / "single" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
