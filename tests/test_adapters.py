"""Saved LoRA adapters are complete: base + adapter with peft's documented calls equals the merged export."""

import json
import os
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file
from test_train_mblip import cli, parts  # noqa: F401  (parts is a fixture)

from mblip import training as train_mblip


RELOAD = textwrap.dedent(
    """
    import json, sys, torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForImageTextToText

    adapter, merged_dir, batch_file = sys.argv[1:4]
    base_path = PeftConfig.from_pretrained(adapter).base_model_name_or_path
    base = AutoModelForImageTextToText.from_pretrained(base_path, trust_remote_code=True)
    model = PeftModel.from_pretrained(base, adapter).merge_and_unload().eval()
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir, trust_remote_code=True).eval()
    batch = torch.load(batch_file, weights_only=True)  # a dict of tensors: nothing to unpickle
    with torch.no_grad():
        reloaded, expected = model(**batch).logits, merged(**batch).logits
    foreign = sorted(name for name in sys.modules if name == "mblip" or name.startswith(("mblip.", "train_mblip")))
    print(json.dumps({"max_diff": (reloaded - expected).abs().max().item(), "base": base_path, "foreign": foreign}))
    """
)


def test_adapter_reloads_in_a_fresh_process_to_the_merged_export(parts, tmp_path):  # noqa: F811
    output_dir = tmp_path / "out"
    trainer, _ = train_mblip.main(
        cli(
            parts,
            os.path.relpath(output_dir),  # a relative output_dir must still give an adapter loadable from anywhere
            "--max_steps",
            "3",
            "--learning_rate",
            "1e-2",
            "--qformer_learning_rate",
            "1e-2",
            "--lora_learning_rate",
            "1e-2",
            "--lora_output",
            "merged_and_adapter",
        )
    )
    adapter = output_dir / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((output_dir / "init").resolve())
    assert sorted(config["modules_to_save"]) == ["language_projection", "qformer"]
    weights = load_file(adapter / "adapter_model.safetensors")
    assert "base_model.model.query_tokens" in weights
    assert any(k.startswith("base_model.model.qformer.") for k in weights)
    assert any(k.startswith("base_model.model.language_projection.") for k in weights)
    # The query tokens did train, so leaving them out would change the model.
    init_tokens = load_file(output_dir / "init" / "model.safetensors")["query_tokens"]
    assert not torch.equal(weights["base_model.model.query_tokens"], init_tokens)

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    torch.save(dict(batch), tmp_path / "batch.pt")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "reload.py").write_text(RELOAD)
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(tmp_path / "reload.py"), str(adapter.resolve()), str(output_dir.resolve()), "../batch.pt"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path / "elsewhere",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert reloaded["foreign"] == []  # only peft, transformers and the repositories' own remote code
    assert reloaded["max_diff"] <= 1e-5, reloaded


def test_adapter_only_output_is_complete_too(parts, tmp_path):  # noqa: F811
    output_dir = tmp_path / "out"
    train_mblip.main(cli(parts, output_dir, "--max_steps", "1", "--lora_output", "adapter", "--freeze_qformer"))
    config = json.loads((output_dir / "adapter" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["language_projection"]  # the frozen Q-Former stays out
    weights = load_file(output_dir / "adapter" / "adapter_model.safetensors")
    assert not any("qformer" in k or "query_tokens" in k for k in weights)
