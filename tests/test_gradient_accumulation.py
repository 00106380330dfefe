"""Gradient accumulation is exact: one step at batch B x accumulation K equals one step at batch B*K, for every LLM
family, in one process and in two accelerate processes (the loss is a token mean over the whole accumulated batch)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accumulation_run import one_step
from safetensors.torch import load_file


FAMILIES = ["mt5", "t5", "bloom", "llama"]


def assert_same_step(reference, other, where):
    (ref_grads, ref_loss), (grads, loss) = reference, other
    assert set(grads) == set(ref_grads), where
    assert len(grads) > 20, where  # Q-Former, queries, projection and the LLM all took part
    # Tolerance relative to the largest gradient of the step: some gradients are zero in exact arithmetic (a key bias
    # under softmax) and only rounding noise here, so a per-tensor relative error would compare noise with noise.
    largest = max(g.abs().max().item() for g in ref_grads.values())
    for name, ref in ref_grads.items():
        err = (grads[name] - ref).abs().max().item() / largest
        assert err < 1e-5, f"{where}: {name} differs by {err:.2e} of the step's largest gradient"
    ratio = (
        torch.cat([g.flatten() for g in grads.values()]).norm()
        / torch.cat([g.flatten() for g in ref_grads.values()]).norm()
    )
    assert ratio.item() == pytest.approx(1.0, abs=1e-4), where  # the bug was 4x
    assert loss == pytest.approx(ref_loss, abs=2e-4), where


@pytest.mark.parametrize("family", FAMILIES)
def test_accumulated_micro_batches_equal_one_big_batch(family, tmp_path):
    grads_8x1, loss_8x1, _ = one_step(family, 8, 1, str(tmp_path / "a"))
    grads_2x4, loss_2x4, _ = one_step(family, 2, 4, str(tmp_path / "b"))
    assert_same_step((grads_8x1, loss_8x1), (grads_2x4, loss_2x4), f"{family} 2x4 vs 8x1")


def test_the_loss_is_not_a_sum_of_micro_batch_means():
    """The bug this guards against: mT5's own loss ignores `num_items_in_batch`, so K micro-batch means were summed.
    A model call with `num_items_in_batch` must divide the token sum by it, for both families."""
    from accumulation_run import rows

    from mblip.demo.tiny import tiny_config, tiny_processor
    from mblip.modeling_mblip import MBlipForConditionalGeneration

    for family in ("mt5", "bloom"):
        processor = tiny_processor(family)
        torch.manual_seed(0)
        model = MBlipForConditionalGeneration(tiny_config(family, len(processor.tokenizer))).eval()
        data = rows()[:2]
        batch = processor(
            images=[r["image"] for r in data], text=[r["prompt"] for r in data], text_target=[r["target"] for r in data]
        )
        mean = model(**batch).loss
        n = int((batch["labels"] != -100).sum())
        with_count = model(**batch, num_items_in_batch=torch.tensor(n * 3)).loss
        torch.testing.assert_close(with_count, mean / 3, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["mt5", "bloom"])
def test_two_accelerate_processes_accumulate_like_one_big_batch(family, tmp_path):
    """2 processes x batch 2 x accumulation 2 = one step over the same 8 rows as one process at batch 8."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "ddp" / "step.safetensors"
    out.parent.mkdir()
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(root / "tests" / "accumulation_run.py"),
        family,
        "2",
        "2",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    saved = load_file(out)
    loss = saved.pop("_logged_loss").item()
    grads_8x1, loss_8x1, _ = one_step(family, 8, 1, str(tmp_path / "single"))
    assert_same_step((grads_8x1, loss_8x1), (saved, loss), f"{family} 2 processes x 2 x 2 vs 8x1")
