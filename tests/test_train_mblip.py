"""train_mblip.py: quantized LoRA re-alignment with the Trainer, on tiny parts and a tiny dataset made here."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import make_blip2, save_llm
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from transformers import TrainerCallback

from mblip import training as train_mblip
from mblip.modeling_mblip import MBlipForConditionalGeneration


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 20)}
GERMAN = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb"}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """BLIP-2 (vision stack source), a bloom LLM, images and a jsonl task mix in mBLIP's release columns."""
    root = tmp_path_factory.mktemp("parts")
    make_blip2("mt5", root / "blip2")
    save_llm("bloom", root / "llm")
    (root / "images").mkdir()
    rows = []
    for name, colour in COLOURS.items():
        Image.new("RGB", (40, 40), colour).save(root / "images" / f"{name}.png")
        rows.append(
            {
                "image_id": f"{name}.png",
                "context": "Caption the image in German.",
                "label": GERMAN[name],
                "lang": "de",
                "task": "caption",
            }
        )
        rows.append(
            {
                "image_id": f"{name}.png",
                "context": "Question: what colour? Short answer in English:",
                "label": name,
                "lang": "en",
                "task": "vqa",
                "extra": 1,
            }
        )
    write_jsonl(root / "train.jsonl", rows)
    return root


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


# The settings these tests were written for, where train_mblip.py's defaults (the official recipe) differ:
# fp32 LLM and precision, no augmentation, checkpointing or token limit, a fresh projection, one step per batch,
# no weight decay, a linear schedule without warm-up. test_the_defaults_are_the_official_recipe covers the defaults.
PRE_RECIPE = [
    "--load_in_8bit",
    "false",
    "--bf16",
    "false",
    "--augment",
    "false",
    "--activation_checkpointing",
    "false",
    "--max_length",
    "0",
    "--projection_init",
    "random",
    "--gradient_accumulation_steps",
    "1",
    "--weight_decay",
    "0",
    "--lr_scheduler_type",
    "linear",
    "--warmup_steps",
    "0",
]


def cli(parts, output_dir, *extra, train_file=None):
    return [*PRE_RECIPE, *official_cli(parts, output_dir, *extra, train_file=train_file)]


def official_cli(parts, output_dir, *extra, train_file=None):
    return [
        "--vision_model_name_or_path",
        str(parts / "blip2"),
        "--language_model_name_or_path",
        str(parts / "llm"),
        "--train_file",
        str(train_file or parts / "train.jsonl"),
        "--image_root",
        str(parts / "images"),
        "--output_dir",
        str(output_dir),
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--seed",
        "7",
        "--dataloader_num_workers",
        "0",
        *extra,
    ]


def model_of(trainer):
    """The trained mBLIP model under the PEFT wrapper."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def test_a_short_run_lowers_the_loss(parts, tmp_path):
    trainer, _ = train_mblip.main(
        cli(
            parts,
            tmp_path / "out",
            "--max_steps",
            "24",
            "--learning_rate",
            "3e-3",
            "--qformer_learning_rate",
            "1e-3",
            "--lora_learning_rate",
            "1e-2",
            "--warmup_steps",
            "0",
        )
    )
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 24
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.3, losses  # from ~ln(vocab), the loss of a near-uniform random LLM


def params(model, prefix):
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(prefix)}


def test_8bit_lora_trains_exactly_what_was_asked(parts, tmp_path):
    import bitsandbytes as bnb

    output_dir = tmp_path / "out"
    trainer, _ = train_mblip.main(
        cli(parts, output_dir, "--load_in_8bit", "--max_steps", "3", "--lora_learning_rate", "1e-2")
    )
    trained = model_of(trainer)
    start = MBlipForConditionalGeneration.from_pretrained(output_dir / "init")  # the assembled starting point

    quantized = [n for n, m in trained.named_modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert quantized and all(n.startswith("language_model.") for n in quantized)
    # Frozen: the ViT, and the LLM's base weights (compared against the same 8-bit quantization of the start).
    for name, value in params(start, "vision_model.").items():
        assert torch.equal(trained.get_parameter(name), value), name
    requantized = MBlipForConditionalGeneration.from_pretrained(
        output_dir / "init",
        quantization_config=train_mblip.quantization_config(
            train_mblip.ModelArguments(model_name_or_path="x", load_in_8bit=True), trainer.args
        ),
    )
    base = {n.replace(".base_layer", ""): p for n, p in trained.named_parameters() if n.startswith("language_model.")}
    for name, value in requantized.state_dict().items():
        if name.startswith("language_model.") and name in base:
            assert torch.equal(base[name].to(value.dtype), value), name
    assert not any(
        p.requires_grad for n, p in trained.named_parameters() if n.startswith("language_model.") and "lora_" not in n
    )
    # Trained: Q-Former, query tokens, projection, LoRA.
    assert not torch.equal(trained.query_tokens, start.query_tokens)
    assert not torch.equal(trained.language_projection.weight, start.language_projection.weight)
    changed = [n for n, v in params(start, "qformer.").items() if not torch.equal(trained.get_parameter(n), v)]
    assert len(changed) > len(params(start, "qformer.")) // 2
    lora_b = [p for n, p in trained.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # LoRA B starts at zero


def test_warm_up_stage_trains_the_projection_only_and_the_vit_on_request(parts, tmp_path):
    trainer, _ = train_mblip.main(
        cli(
            parts,
            tmp_path / "warmup",
            "--freeze_qformer",
            "--use_peft",
            "false",
            "--learning_rate",
            "5e-3",
            "--max_steps",
            "2",
        )
    )
    trained = model_of(trainer)
    start = MBlipForConditionalGeneration.from_pretrained(tmp_path / "warmup" / "init")
    assert {n for n, p in trained.named_parameters() if p.requires_grad} == {
        "language_projection.weight",
        "language_projection.bias",
    }
    for name, value in start.state_dict().items():
        if not name.startswith("language_projection."):
            assert torch.equal(trained.state_dict()[name], value), name
    assert not torch.equal(trained.language_projection.weight, start.language_projection.weight)

    trainer, _ = train_mblip.main(cli(parts, tmp_path / "vit", "--train_vision_model", "--max_steps", "2"))
    trained, start = model_of(trainer), MBlipForConditionalGeneration.from_pretrained(tmp_path / "vit" / "init")
    assert not torch.equal(
        trained.vision_model.embeddings.patch_embedding.weight, start.vision_model.embeddings.patch_embedding.weight
    )


FRESH = textwrap.dedent(
    """
    import json, sys, torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
    inputs = processor(images=[Image.new("RGB", (40, 40), (220, 30, 30))], text=["Caption the image in German."])
    print(json.dumps({"model": type(model).__module__, "ids": model.generate(**inputs, max_new_tokens=4).tolist()}))
    """
)


def test_output_is_a_merged_model_repository_that_loads_with_remote_code(parts, tmp_path):
    output_dir = tmp_path / "out"
    trainer, _ = train_mblip.main(
        cli(
            parts,
            output_dir,
            "--max_steps",
            "3",
            "--lora_learning_rate",
            "1e-2",
            "--lora_output",
            "merged_and_adapter",
            "--validation_file",
            str(parts / "train.jsonl"),
            "--eval_strategy",
            "no",
            "--license",
            "bigscience-bloom-rail-1.0",
        )
    )
    files = {p.name for p in output_dir.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_mblip.py", "README.md", "data_report.json"} <= files
    assert (output_dir / "adapter" / "adapter_config.json").is_file()
    assert not (output_dir / ".model-incomplete").exists()

    # The merged, un-quantized export computes what the trained (un-merged) model computes.
    merged = MBlipForConditionalGeneration.from_pretrained(output_dir).eval()
    peft_model = trainer.accelerator.unwrap_model(trainer.model).eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        expected = peft_model(**batch)
        got = merged(**batch)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-5)
    assert not torch.equal(merged.language_model.lm_head.weight, torch.zeros(1))

    card = (output_dir / "README.md").read_text()
    metadata = ModelCard.load(output_dir / "README.md").data
    assert metadata.language == ["de", "en"] and metadata.pipeline_tag == "image-text-to-text"
    # --license states the licence; the local parts have no Hub id, so no base_model (the text names them).
    assert metadata.license == "bigscience-bloom-rail-1.0" and metadata.base_model is None
    assert f"`{parts / 'llm'}`" in card
    init_card = ModelCard.load(output_dir / "init" / "README.md")
    assert init_card.data.license == "bigscience-bloom-rail-1.0"
    assert "train_loss" in card and "eval_loss" in card
    assert "query_key_value" in card and '"lora_r": 8' in card and "8 rows" in card

    (tmp_path / "fresh.py").write_text(FRESH)
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin"}
    result = subprocess.run(
        [sys.executable, str(tmp_path / "fresh.py"), str(output_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    assert fresh["model"].startswith("transformers_modules.") and len(fresh["ids"][0]) >= 1


class Kill(TrainerCallback):
    """Dies right after step `at`, as a killed job would (the checkpoint before it is on disk)."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt(f"killed after step {self.at}")


def test_a_killed_run_resumes_to_the_same_weights(parts, tmp_path):
    extra = [
        "--max_steps",
        "6",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--augment",
        "--lora_dropout",
        "0.1",
        "--per_device_train_batch_size",
        "2",
        "--load_in_8bit",
    ]
    train_mblip.main(cli(parts, tmp_path / "straight", *extra))
    with pytest.raises(KeyboardInterrupt):
        train_mblip.main(cli(parts, tmp_path / "killed", *extra), callbacks=[Kill(at=5)])
    assert (tmp_path / "killed" / "checkpoint-4" / "trainable.safetensors").is_file()
    assert not (tmp_path / "killed" / "config.json").exists()  # nothing that looks finished
    trainer, _ = train_mblip.main(cli(parts, tmp_path / "killed", *extra))  # resumes from checkpoint-4 by itself
    assert trainer.state.global_step == 6
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "killed" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_broken_rows_are_skipped_counted_and_reported(parts, tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    os.symlink(tmp_path / "corrupt.png", parts / "images" / "corrupt-link.png") if not (
        parts / "images" / "corrupt-link.png"
    ).exists() else None
    good = [json.loads(line) for line in (parts / "train.jsonl").read_text().splitlines()]
    bad = [
        {"image_id": "missing.png", "context": "x", "label": "y"},
        {"image_id": "corrupt-link.png", "context": "x", "label": "y"},
        {"image_id": "red.png", "context": "x", "label": "  "},
        {"image_id": None, "context": "x", "label": "y"},
    ]
    write_jsonl(tmp_path / "mixed.jsonl", good + bad)
    with pytest.raises(ValueError, match=r"4 of 12 train rows \(33.3%\) are unusable, more than --max_bad_rows 0.01"):
        train_mblip.main(cli(parts, tmp_path / "strict", "--max_steps", "1", train_file=tmp_path / "mixed.jsonl"))
    train_mblip.main(
        cli(
            parts,
            tmp_path / "lenient",
            "--max_steps",
            "1",
            "--max_bad_rows",
            "0.5",
            train_file=tmp_path / "mixed.jsonl",
        )
    )
    report = json.loads((tmp_path / "lenient" / "data_report.json").read_text())
    assert report["train"]["rows"] == 12 and report["train"]["bad_rows"] == 4
    assert report["train"]["by_reason"] == {"missing image": 1, "unreadable image": 1, "empty target": 1, "no image": 1}
    assert [e["row"] for e in report["train"]["examples"]] == [8, 9, 10, 11]
    assert "4 were skipped as unusable" in (tmp_path / "lenient" / "README.md").read_text()


def test_an_image_that_fails_to_decode_in_training_is_skipped_not_replaced(parts, tmp_path):
    import struct
    import zlib

    from mblip.processing_mblip import MBlipProcessor
    from mblip.training import FAILED_ROWS_KEY, PLACEHOLDER_KEY, DataArguments, MBlipCollator

    Image.new("RGB", (64, 64), (10, 200, 10)).save(tmp_path / "full.jpg", quality=95)
    # A PNG whose pixel data is garbage behind valid chunk checksums: verify() passes, decoding fails.
    Image.new("RGB", (8, 8), (10, 200, 10)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    start = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[start : start + 4])[0]
    garbage = bytes(range(length))
    chunk = struct.pack(">I", length) + b"IDAT" + garbage + struct.pack(">I", zlib.crc32(b"IDAT" + garbage))
    (tmp_path / "truncated.jpg").write_bytes(data[:start] + chunk + data[start + 12 + length :])
    args = DataArguments(train_file="x.jsonl", image_root=str(tmp_path))
    assert train_mblip.find_problem({"image_id": "truncated.jpg", "label": "y"}, args) == ""
    collator = MBlipCollator(MBlipProcessor.from_pretrained(parts / "blip2", is_encoder_decoder=False), args)
    batch = collator(
        [
            {"image_id": "full.jpg", "context": "a", "label": "b"},
            {"image_id": "truncated.jpg", "context": "a", "label": "b"},
        ]
    )
    assert batch["pixel_values"].shape[0] == 1 and collator.failures == 1
    # A batch none of whose images decodes becomes one placeholder row without a labelled token (MBlipTrainer gives it
    # a loss of exactly zero; tests/test_train_resume.py trains through such steps).
    batch = collator([{"image_id": "truncated.jpg", "context": "a", "label": "b", "_row": 5}])
    assert int(batch[PLACEHOLDER_KEY]) == 1 and batch[FAILED_ROWS_KEY].tolist() == [5] and collator.failures == 2
    assert batch["pixel_values"].shape[0] == 1 and (batch["labels"] == -100).all()


@pytest.mark.parametrize(
    "launcher", [["--multi_gpu", "--num_processes", "2"], ["--config_file", "configs/cpu_2proc.yaml"]], ids=str
)
def test_two_processes_under_accelerate_launch(parts, tmp_path, launcher):
    command = [
        "accelerate",
        "launch",
        *launcher,
        "train_mblip.py",
        *cli(parts, tmp_path / "ddp", "--max_steps", "2", "--per_device_train_batch_size", "2"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    logs = result.stdout + result.stderr
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Process rank 0, device cpu" in logs and "Process rank 1, device cpu" in logs
    assert "distributed True" in logs
    state = json.loads((tmp_path / "ddp" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    # 8 rows, 2 per process and step: two processes finish an epoch in 2 steps (one process would need 4).
    assert state["epoch"] == 1.0, state["epoch"]
    assert (tmp_path / "ddp" / "config.json").is_file()


def test_arguments_come_from_the_command_line_or_one_yaml_file(parts, tmp_path):
    (tmp_path / "args.yaml").write_text(
        f"model_name_or_path: {parts / 'blip2'}\ntrain_file: {parts / 'train.jsonl'}\noutput_dir: {tmp_path}\n"
        "load_in_4bit: true\nlora_r: 4\n"
    )
    model_args, data_args, training_args = train_mblip.parse_args([str(tmp_path / "args.yaml")])
    assert model_args.load_in_4bit and model_args.lora_r == 4 and data_args.image_column == "image_id"
    assert (training_args.learning_rate, training_args.qformer_learning_rate, training_args.lora_learning_rate) == (
        1e-5,
        1e-5,
        2e-4,
    )
    assert not model_args.load_in_8bit  # 4-bit asked for: the default 8-bit steps aside
    with pytest.raises(ValueError, match="Choose one of --load_in_8bit and --load_in_4bit"):
        train_mblip.parse_args(cli(parts, tmp_path, "--load_in_8bit", "--load_in_4bit"))
    with pytest.raises(ValueError, match="either --model_name_or_path"):
        train_mblip.parse_args(cli(parts, tmp_path, "--model_name_or_path", "x"))
    with pytest.raises(ValueError, match="max_bad_rows is a fraction"):
        train_mblip.parse_args(cli(parts, tmp_path, "--max_bad_rows", "3"))


RECIPES = sorted(os.listdir(os.path.join("configs", "recipes")))


def test_the_defaults_are_the_official_recipe(parts, tmp_path):
    """mT0-XL instruction training as the official configs compose it (README.md, "Official recipe vs this project")."""
    model_args, data_args, args = train_mblip.parse_args(official_cli(parts, tmp_path))
    assert model_args.load_in_8bit and not model_args.load_in_4bit and model_args.projection_init == "auto"
    assert (model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout) == (8, 16, 0.05)
    assert data_args.augment and data_args.max_length == 128 and data_args.prompt_truncation_side == "right"
    assert (args.learning_rate, args.qformer_learning_rate, args.lora_learning_rate) == (1e-5, 1e-5, 2e-4)
    assert (args.weight_decay, str(args.lr_scheduler_type.value), args.warmup_steps) == (0.1, "cosine", 1000)
    assert (args.gradient_accumulation_steps, args.num_train_epochs, args.max_grad_norm) == (16, 2, 1.0)
    assert 8 * args.gradient_accumulation_steps == 128 and args.activation_checkpointing
    assert args.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    _, data_args, _ = train_mblip.parse_args(official_cli(parts, tmp_path, "--image_features_cache", "c"))
    assert not data_args.augment  # cached ViT outputs cannot be augmented

    # A short run on the defaults: 8-bit LLM, checkpointing, per-part rates, decay on weights but not on biases/norms.
    trainer, _ = train_mblip.main(official_cli(parts, tmp_path / "out", "--max_steps", "1", "--max_length", "6"))
    model = model_of(trainer)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.language_model.modules())
    group_of = {id(p): g for g in trainer.optimizer.param_groups for p in g["params"]}
    for name, param in trainer.model.named_parameters():
        if not param.requires_grad:
            continue
        short = train_mblip.part_name(name)
        lr = 2e-4 if "lora_" in short else 1e-5
        decay = 0.0 if short.endswith("bias") or "layernorm" in short.lower() else 0.1
        group = group_of[id(param)]  # "lr" is scheduled: 1/1000 of the rate after one warm-up step
        assert (group["initial_lr"], group["lr"], group["weight_decay"]) == (lr, pytest.approx(lr / 1000), decay), name
    assert {g["weight_decay"] for g in trainer.optimizer.param_groups} == {0.0, 0.1}
    assert trainer.state.global_step == 1 and trainer.args.gradient_accumulation_steps == 16


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_preset_parses_with_an_override(recipe, tmp_path):
    path = os.path.join("configs", "recipes", recipe)
    model_args, data_args, args = train_mblip.parse_args([path, "--output_dir", str(tmp_path), "--max_steps", "3"])
    assert args.output_dir == str(tmp_path) and args.max_steps == 3  # flags after the file win
    assert args.weight_decay == 0.1 and str(args.lr_scheduler_type.value) == "cosine" and args.warmup_steps == 1000
    assert args.activation_checkpointing and args.max_grad_norm == 1.0 and args.seed == 42
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
    assert (model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout) == (8, 16, 0.05)
    if recipe.startswith("finetune_"):
        assert model_args.model_name_or_path and model_args.load_in_8bit and model_args.use_peft
        assert (args.learning_rate, args.qformer_learning_rate, args.lora_learning_rate) == (5e-5, 5e-5, 5e-5)
        expected = {
            "xgqa": (256, 5, 256),
            "xvnli": (128, 10, 256),
            "marvl": (128, 20, 256),
            "flickr30k": (128, 10, 128),
        }
        assert (batch, args.num_train_epochs, data_args.max_length) == expected[recipe[9:-5]]
        assert data_args.augment is (recipe != "finetune_marvl.yaml")
        return
    assert batch == 128 and (args.learning_rate, args.qformer_learning_rate) == (1e-5, 1e-5)
    assert data_args.max_length == 128 and data_args.augment and data_args.prompt_truncation_side == "right"
    if recipe == "mt0_xl_warmup.yaml":
        assert model_args.freeze_qformer and not model_args.use_peft and model_args.load_in_8bit
        assert model_args.projection_init == "auto" and args.max_steps == 3 and args.num_train_epochs == 1
    elif recipe == "mt0_xl_instruct.yaml":
        assert model_args.load_in_8bit and model_args.use_peft and args.lora_learning_rate == 2e-4
        assert args.num_train_epochs == 2 and not model_args.freeze_qformer
    else:
        assert recipe == "bloomz_7b_instruct.yaml", recipe
        assert model_args.load_in_4bit and not model_args.load_in_8bit and model_args.bnb_4bit_quant_type == "nf4"
        assert not model_args.bnb_4bit_use_double_quant and model_args.projection_init == "random"
        assert args.per_device_train_batch_size == 4 and args.num_train_epochs == 2


@pytest.mark.parametrize("name", ["multi_gpu.yaml", "deepspeed_zero2.yaml", "fsdp.yaml", "cpu_2proc.yaml"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(os.path.join("configs", name))
    expected = {
        "multi_gpu.yaml": "MULTI_GPU",
        "deepspeed_zero2.yaml": "DEEPSPEED",
        "fsdp.yaml": "FSDP",
        "cpu_2proc.yaml": "MULTI_GPU",  # accelerate's own launcher; MULTI_CPU would need mpirun (see the file)
    }[name]
    assert str(config.distributed_type).endswith(expected)
    if name == "deepspeed_zero2.yaml":
        assert config.deepspeed_config["zero_stage"] == 2


class CountViTCalls(TrainerCallback):
    def __init__(self):
        self.calls = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.vision_model.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


def test_cached_image_features_train_like_pixels_without_running_the_vit(parts, tmp_path):
    extra = ["--max_steps", "4", "--lora_dropout", "0.0", "--learning_rate", "1e-3", "--warmup_steps", "0"]
    pixels, cached = CountViTCalls(), CountViTCalls()
    from_pixels, _ = train_mblip.main(cli(parts, tmp_path / "pixels", *extra), callbacks=[pixels])
    from_cache, _ = train_mblip.main(
        cli(parts, tmp_path / "cached", *extra, "--image_features_cache", str(tmp_path / "features")),
        callbacks=[cached],
    )
    assert pixels.calls == 4 and cached.calls == 0
    losses = [[e["loss"] for e in t.state.log_history if "loss" in e] for t in (from_pixels, from_cache)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
    a, b = load_file(tmp_path / "pixels" / "model.safetensors"), load_file(tmp_path / "cached" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=key)
    assert len(list((tmp_path / "features").glob("shard-*.safetensors"))) == 1  # 4 images, one shard


def test_image_features_cache_resumes_refuses_another_vit_and_skips_undecodable_images(parts, tmp_path):
    import datasets

    from mblip.processing_mblip import MBlipProcessor

    model = MBlipForConditionalGeneration.from_pretrained(parts / "blip2").eval()
    processor = MBlipProcessor.from_pretrained(parts / "blip2", is_encoder_decoder=False)
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    for name in ("red.png", "green.png", "blue.png"):
        (tmp_path / name).symlink_to(parts / "images" / name)
    args = train_mblip.DataArguments(
        train_file="x.jsonl", image_root=str(tmp_path), image_features_cache=str(tmp_path / "c")
    )

    def rows(*names):
        return datasets.Dataset.from_list([{"image_id": n, "context": "", "label": "x"} for n in names])

    cache = train_mblip.build_image_features_cache(model, processor, [rows("red.png", "green.png")], args, batch_size=2)
    first_shard = next((tmp_path / "c").glob("shard-*")).stat().st_mtime_ns
    # A larger dataset later: only the new images are encoded, into a new shard; the first is untouched.
    cache = train_mblip.build_image_features_cache(
        model,
        processor,
        [rows("red.png", "blue.png", "ok.png", "broken.png"), rows(["green.png", "blue.png"])],
        args,
        2,
    )
    assert len(cache.shard_of) == 4 and len(list((tmp_path / "c").glob("shard-*"))) == 2
    assert next(iter(sorted((tmp_path / "c").glob("shard-*")))).stat().st_mtime_ns == first_shard
    # The cached features are the ViT's output.
    pixels = processor.image_processor(Image.open(tmp_path / "blue.png"), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.vision_model(pixel_values=pixels).last_hidden_state[0]
    torch.testing.assert_close(cache.load([str(tmp_path / "blue.png")])[0], expected)
    # The collator trains from them: rows with several images stack per row; an undecodable image's row is skipped.
    collator = train_mblip.MBlipCollator(processor, args, features=cache)
    batch = collator(
        [
            {"image_id": "red.png", "context": "a", "label": "b"},
            {"image_id": "broken.png", "context": "a", "label": "b"},
        ]
    )
    assert "pixel_values" not in batch and batch["image_embeds"].shape[0] == 1 and collator.failures == 1
    pair = collator([{"image_id": ["green.png", "blue.png"], "context": "a", "label": "b"}])
    assert pair["image_embeds"].shape[:2] == (1, 2)
    assert model(**pair).loss.isfinite()
    # A batch with no cached image becomes one zero placeholder of the features' shape, without a labelled token.
    empty = collator([{"image_id": "broken.png", "context": "a", "label": "b"}])
    assert empty["image_embeds"].shape == (1, *expected.shape) and not empty["image_embeds"].any()
    assert (empty["labels"] == -100).all() and int(empty[train_mblip.PLACEHOLDER_KEY]) == 1
    # Another ViT (or other preprocessing) must not reuse these features.
    with torch.no_grad():
        model.vision_model.post_layernorm.bias.add_(1.0)
    with pytest.raises(ValueError, match="holds features of another ViT or image preprocessing"):
        train_mblip.build_image_features_cache(model, processor, [rows("red.png")], args, 2)


def test_image_features_cache_refuses_augmentation_and_a_trained_vit(parts, tmp_path):
    with pytest.raises(ValueError, match="cannot follow --augment"):
        train_mblip.main(cli(parts, tmp_path / "a", "--augment", "--image_features_cache", str(tmp_path / "c")))
    with pytest.raises(ValueError, match="needs a frozen ViT"):
        train_mblip.main(
            cli(
                parts,
                tmp_path / "b",
                "--train_vision_model",
                "--max_steps",
                "1",
                "--image_features_cache",
                str(tmp_path / "c"),
            )
        )
