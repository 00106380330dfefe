"""train_mblip.py reruns: interrupted checkpoint saves, changed settings, finished runs, exports over earlier output,
and odd rows that must not end a run (issue 15). Tiny parts, a few steps each."""

import json
import math
import shutil
import struct
import zlib

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_train_mblip import Kill, cli, parts, write_jsonl  # noqa: F401, F811  (parts is a fixture)
from transformers import TrainerCallback

from mblip import training as train_mblip
from mblip.modeling_mblip import MBlipForConditionalGeneration
from mblip.training import FAILED_ROWS_KEY, PLACEHOLDER_KEY


# ruff: noqa: F811  (the `parts` fixture, imported from test_train_mblip, is an argument of every test)
RESUMABLE = ["--max_steps", "6", "--save_strategy", "steps", "--per_device_train_batch_size", "2"]


class CountSteps(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def same_weights(a, b):
    a, b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def train_loss(output_dir):
    return json.loads((output_dir / "all_results.json").read_text())["train_loss"]


def test_a_half_written_checkpoint_is_skipped_and_the_resume_equals_the_straight_run(parts, tmp_path):
    extra = [*RESUMABLE, "--save_steps", "2", "--lora_dropout", "0.1"]
    train_mblip.main(cli(parts, tmp_path / "straight", *extra))
    with pytest.raises(KeyboardInterrupt):
        train_mblip.main(cli(parts, tmp_path / "killed", *extra), callbacks=[Kill(at=5)])
    # What a kill (or a full disk) during the save of step 5 leaves: weights half written, no trainer_state.json.
    complete, half = tmp_path / "killed" / "checkpoint-4", tmp_path / "killed" / "checkpoint-5"
    half.mkdir()
    weights = (complete / "trainable.safetensors").read_bytes()
    (half / "trainable.safetensors").write_bytes(weights[: len(weights) // 3])
    shutil.copy(complete / "optimizer.pt", half / "optimizer.pt")
    # And a later one whose trainer_state.json was cut short.
    shutil.copytree(complete, tmp_path / "killed" / "checkpoint-6")
    state = (complete / "trainer_state.json").read_text().replace('"global_step": 4', '"global_step": 6')
    (tmp_path / "killed" / "checkpoint-6" / "trainer_state.json").write_text(state[: len(state) // 2])

    trainer, _ = train_mblip.main(cli(parts, tmp_path / "killed", *extra))  # resumes from checkpoint-4
    assert trainer.state.global_step == 6
    same_weights(tmp_path / "straight", tmp_path / "killed")
    assert json.loads((tmp_path / "killed" / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6
    assert not (tmp_path / "killed" / "checkpoint-5").exists()


def test_a_mid_epoch_resume_with_augmentation_is_exact_and_reports_the_whole_runs_loss(parts, tmp_path):
    # 8 rows, 2 per step: 4 steps an epoch; checkpoint-3 is mid-epoch.
    extra = [*RESUMABLE, "--save_steps", "3", "--augment", "--lora_dropout", "0.1", "--learning_rate", "1e-3"]
    train_mblip.main(cli(parts, tmp_path / "straight", *extra))
    with pytest.raises(KeyboardInterrupt):
        train_mblip.main(cli(parts, tmp_path / "killed", *extra), callbacks=[Kill(at=4)])
    assert (tmp_path / "killed" / "checkpoint-3").is_dir()
    trainer, _ = train_mblip.main(cli(parts, tmp_path / "killed", *extra))
    assert trainer.state.global_step == 6
    same_weights(tmp_path / "straight", tmp_path / "killed")
    assert train_loss(tmp_path / "killed") == pytest.approx(train_loss(tmp_path / "straight"), rel=1e-5)
    assert f"train_loss: {train_loss(tmp_path / 'straight'):.4f}" in (tmp_path / "killed" / "README.md").read_text()


def test_a_rerun_with_other_data_or_settings_is_refused_unless_told_to_start_over(parts, tmp_path):
    extra = [*RESUMABLE, "--save_steps", "1"]
    with pytest.raises(KeyboardInterrupt):
        train_mblip.main(cli(parts, tmp_path / "out", *extra), callbacks=[Kill(at=2)])
    rows = [json.loads(line) for line in (parts / "train.jsonl").read_text().splitlines()]
    write_jsonl(tmp_path / "other.jsonl", rows[:6])
    with pytest.raises(ValueError, match=r"other data or settings(.|\n)*train_file(.|\n)*--overwrite"):
        train_mblip.main(cli(parts, tmp_path / "out", *extra, train_file=tmp_path / "other.jsonl"))
    with pytest.raises(ValueError, match=r"training.learning_rate: 1e-05 -> 0.001"):
        train_mblip.main(cli(parts, tmp_path / "out", *extra, "--learning_rate", "1e-3"))
    # Output-only settings do not change the run: this resumes from checkpoint-1 (killed before saving step 2).
    steps = CountSteps()
    train_mblip.main(cli(parts, tmp_path / "out", *extra, "--logging_steps", "2"), callbacks=[steps])
    assert steps.steps == 5
    # --overwrite starts over, on the new data, without the old checkpoints.
    steps = CountSteps()
    trainer, report = train_mblip.main(
        cli(parts, tmp_path / "out", *extra, "--overwrite", train_file=tmp_path / "other.jsonl"),
        callbacks=[steps],
    )
    assert steps.steps == 6 and report["train"]["rows"] == 6


def test_a_finished_run_or_one_killed_during_export_does_not_train_again(parts, tmp_path):
    extra = [*RESUMABLE, "--save_steps", "2", "--max_steps", "3"]
    out = tmp_path / "out"
    train_mblip.main(cli(parts, out, *extra))
    loss = train_loss(out)
    steps = CountSteps()
    trainer, _ = train_mblip.main(cli(parts, out, *extra), callbacks=[steps])  # the same, finished run
    assert trainer is None and steps.steps == 0
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
    # Killed during the export: no done marker, the export half moved in.
    (out / ".mblip" / "done.json").unlink()
    (out / "config.json").unlink()
    (out / "model.safetensors").unlink()
    steps = CountSteps()
    trainer, _ = train_mblip.main(cli(parts, out, *extra), callbacks=[steps])
    assert steps.steps == 0 and trainer.state.global_step == 3
    assert (out / "config.json").is_file() and train_loss(out) == pytest.approx(loss, rel=1e-6)
    MBlipForConditionalGeneration.from_pretrained(out)


def test_an_export_replaces_its_own_earlier_files_and_never_the_users(parts, tmp_path):
    out = tmp_path / "out"
    train_mblip.main(cli(parts, out, "--max_steps", "1"))
    assert (out / "model.safetensors").is_file()
    (out / "notes.txt").write_text("mine")
    train_mblip.main(cli(parts, out, "--max_steps", "1", "--overwrite", "--max_shard_size", "300KB"))
    assert not (out / "model.safetensors").exists()  # no stale single file beside the new shards
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    assert (out / "notes.txt").read_text() == "mine"
    MBlipForConditionalGeneration.from_pretrained(out)
    # Back to one file: the shards and their index go.
    train_mblip.main(cli(parts, out, "--max_steps", "1", "--overwrite"))
    assert (out / "model.safetensors").is_file() and not list(out.glob("model-*-of-*.safetensors"))
    assert not (out / "model.safetensors.index.json").exists()

    # A user's own README.md or adapter/ file is never overwritten or deleted: refused before training.
    mine = tmp_path / "mine"
    (mine / "adapter").mkdir(parents=True)
    (mine / "adapter" / "mine.txt").write_text("mine")
    (mine / "README.md").write_text("my notes")
    argv = cli(parts, mine, "--max_steps", "1", "--lora_output", "merged_and_adapter")
    with pytest.raises(FileExistsError, match=r"README.md(.|\n)*adapter/mine.txt|adapter/mine.txt(.|\n)*README.md"):
        train_mblip.main(argv)
    assert (mine / "README.md").read_text() == "my notes" and (mine / "adapter" / "mine.txt").read_text() == "mine"


def test_list_labels_missing_prompts_and_bad_max_length(parts, tmp_path):
    from mblip.processing_mblip import MBlipProcessor

    args = train_mblip.DataArguments(train_file="x.jsonl", image_root=str(parts / "images"))
    assert train_mblip.target_text(["yes", "no", "no", "yes", "maybe"]) == "yes"  # most common, first of ties
    assert train_mblip.find_problem({"image_id": "red.png", "label": []}, args) == "empty target"
    rows = [{"image_id": "red.png", "context": "q?", "label": ["no", "yes", "yes"]}] * 3
    import datasets

    kept, report = train_mblip.drop_bad_rows(datasets.Dataset.from_list(rows), args, "train")
    assert report["list_targets"] == 3 and report["bad_rows"] == 0
    processor = MBlipProcessor.from_pretrained(parts / "blip2", is_encoder_decoder=False)
    batch = train_mblip.MBlipCollator(processor, args)([kept[0]])
    labels = [t for t in batch["labels"][0].tolist() if t != -100]
    assert processor.tokenizer.decode(labels, skip_special_tokens=True).strip() == "yes"

    no_prompts = datasets.Dataset.from_list([{"image_id": "red.png", "label": "x"}])
    with pytest.raises(ValueError, match=r"no column\(s\) \['context'\](.|\n)*--prompt_column ''"):
        train_mblip.drop_bad_rows(no_prompts, args, "train")
    args.prompt_column = ""  # targets only, on request
    train_mblip.drop_bad_rows(no_prompts, args, "train")
    with pytest.raises(ValueError, match="--max_length must be positive"):
        train_mblip.parse_args(cli(parts, tmp_path, "--max_length", "-3"))


def truncated_png(path):
    """A PNG whose pixel data is garbage behind valid chunk checksums: verify() passes, decoding fails."""
    Image.new("RGB", (8, 8), (10, 200, 10)).save(path)
    data = path.read_bytes()
    start = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[start : start + 4])[0]
    garbage = bytes(range(length))
    chunk = struct.pack(">I", length) + b"IDAT" + garbage + struct.pack(">I", zlib.crc32(b"IDAT" + garbage))
    path.write_bytes(data[:start] + chunk + data[start + 12 + length :])


@pytest.fixture(scope="module")
def truncated_data(parts, tmp_path_factory):
    """8 good rows and 3 whose image passes the up-front check but fails to decode."""
    root = tmp_path_factory.mktemp("truncated")
    for name in ("t1.png", "t2.png", "t3.png"):
        truncated_png(parts / "images" / name)
    rows = [json.loads(line) for line in (parts / "train.jsonl").read_text().splitlines()]
    rows += [{"image_id": n, "context": "c", "label": "x", "lang": "de"} for n in ("t1.png", "t2.png", "t3.png")]
    write_jsonl(root / "train.jsonl", rows)
    return root / "train.jsonl"


@pytest.mark.parametrize("workers", ["0", "1"])
def test_decode_failures_count_each_row_once_and_are_bounded(parts, tmp_path, truncated_data, workers):
    extra = ["--num_train_epochs", "2", "--max_bad_rows", "0.5", "--dataloader_num_workers", workers]
    trainer, report = train_mblip.main(cli(parts, tmp_path / "lenient", *extra, train_file=truncated_data))
    assert trainer.state.global_step == 6  # 11 rows, 4 a step, 2 epochs
    assert report["decode_failures"] == 3 and report["decode_failure_rows"] == [8, 9, 10]
    # Workers are forked (Linux), not started by Python 3.14's fork server, which would import torch in each.
    loader = trainer.get_train_dataloader()
    context = loader.multiprocessing_context
    assert (context.get_start_method() if context else None) == ("fork" if workers == "1" else None)
    with pytest.raises(ValueError, match=r"3 of 11 training rows \(27.3%\) are unusable, more than --max_bad_rows"):
        train_mblip.main(cli(parts, tmp_path / "strict", "--max_bad_rows", "0.2", train_file=truncated_data))


def test_a_batch_with_no_usable_image_trains_on_nothing(parts, tmp_path, truncated_data):
    # Batch size 1: each of the 3 truncated rows makes a batch none of whose images decodes. Such a step runs the model
    # on a placeholder row without a labelled token (so that DDP's processes stay in step) and adds exactly zero.
    extra = ["--per_device_train_batch_size", "1", "--max_bad_rows", "0.5", "--max_steps", "11", "--logging_steps", "1"]
    extra += ["--validation_file", str(truncated_data), "--per_device_eval_batch_size", "1", "--eval_strategy", "steps"]
    extra += ["--eval_steps", "11"]
    trainer, report = train_mblip.main(cli(parts, tmp_path / "run", *extra, train_file=truncated_data))
    assert trainer.state.global_step == 11 and report["decode_failures"] == 3
    # Evaluation steps through such batches too (each counts as one row of loss 0, with a warning).
    assert math.isfinite(next(entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 11 and losses.count(0.0) == 3 and all(math.isfinite(loss) for loss in losses), losses

    batch = trainer.data_collator([{"image_id": "t1.png", "context": "c", "label": "x", "_row": 8}])
    assert int(batch[PLACEHOLDER_KEY]) == 1 and batch[FAILED_ROWS_KEY].tolist() == [8]
    model = trainer.model
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    assert loss.item() == 0.0
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and not g.any() for g in grads.values()), [
        n for n, g in grads.items() if g is None
    ]


def test_one_odd_line_or_row_does_not_end_the_run(parts, tmp_path):
    lines = (parts / "train.jsonl").read_bytes().splitlines(keepends=True)
    odd = json.dumps({"image_id": ["red.png", "blue.png"], "context": "two", "label": "zwei"}).encode() + b"\n"
    data = lines[:3] + [b'{"image_id": "red.png", "context": \n', b'{"image_id": "red.png", "label": "r\xffot"}\n']
    data += lines[3:] + [odd]
    (tmp_path / "odd.jsonl").write_bytes(b"".join(data))
    offset = sum(len(line) for line in data[:3])
    with pytest.raises(ValueError, match=rf"odd.jsonl', 'line': 4, 'offset': {offset}, 'reason': 'malformed JSON"):
        train_mblip.main(cli(parts, tmp_path / "strict", "--max_steps", "1", train_file=tmp_path / "odd.jsonl"))
    trainer, report = train_mblip.main(
        cli(
            parts,
            tmp_path / "lenient",
            "--max_steps",
            "3",
            "--max_bad_rows",
            "0.3",
            "--per_device_train_batch_size",
            "9",
            train_file=tmp_path / "odd.jsonl",
        )
    )
    assert trainer.state.global_step == 3
    assert report["train"]["rows"] == 11 and report["train"]["by_reason"] == {
        "malformed JSON line": 1,
        "not UTF-8": 1,
        "another number of images": 1,
    }
    not_utf8 = next(e for e in report["train"]["examples"] if e.get("line") == 5)
    assert not_utf8["offset"] == offset + len(data[3]) and "0xff" in not_utf8["reason"]


def test_a_corrupt_safetensors_file_names_itself(parts, tmp_path):
    extra = [*RESUMABLE, "--save_steps", "2"]
    with pytest.raises(KeyboardInterrupt):
        train_mblip.main(cli(parts, tmp_path / "out", *extra), callbacks=[Kill(at=3)])
    weights = tmp_path / "out" / "checkpoint-2" / "trainable.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ValueError, match=rf"{weights} is corrupt or incomplete"):
        train_mblip.main(cli(parts, tmp_path / "out", *extra))

    cache = tmp_path / "features"
    argv = cli(parts, tmp_path / "cached", "--max_steps", "1", "--image_features_cache", str(cache))
    train_mblip.main(argv)
    shard = next(cache.glob("shard-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"cache shard {shard} is corrupt"):
        train_mblip.main(cli(parts, tmp_path / "cached2", "--max_steps", "1", "--image_features_cache", str(cache)))
