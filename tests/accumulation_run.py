"""One optimizer step of MBlipTrainer on a fixed 8-row batch, for the gradient-accumulation tests.

`python tests/accumulation_run.py FAMILY BATCH ACCUMULATION OUT` (alone or under `accelerate launch`) trains a tiny
mBLIP for one step with `BATCH` rows per device and `ACCUMULATION` micro-batches, and writes the gradients seen by the
optimizer and the logged loss to OUT (a safetensors file) from the main process.
"""

import os
import sys

import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import TrainerCallback


ROWS = 8
PROMPTS = ["Caption the image in German.", "", "Question: how many circles are there? Short answer in English:", "zwei"]
TARGETS = [
    "ein roter Kreis über einem blauen Quadrat",
    "two",
    "deux triangles verts à gauche sur la droite",
    "красный круг",
]


def rows():
    """Eight rows whose targets differ in length, so a mean of micro-batch means differs from the token mean."""
    generator = torch.Generator().manual_seed(3)
    out = []
    for i in range(ROWS):
        pixels = (torch.rand(40, 40, 3, generator=generator) * 255).to(torch.uint8).numpy()
        out.append({"image": Image.fromarray(pixels), "prompt": PROMPTS[i % 4], "target": TARGETS[(i * 3) % 4]})
    return out


class CaptureGradients(TrainerCallback):
    """The gradients the optimizer is about to apply (after accumulation and the data-parallel all-reduce)."""

    def __init__(self):
        self.gradients = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        for name, param in model.named_parameters():
            if param.grad is not None:
                self.gradients[name.removeprefix("module.")] = param.grad.detach().cpu().clone()


def one_step(family: str, batch: int, accumulation: int, output_dir: str):
    """Returns (gradients, logged loss) of one optimizer step over the eight rows."""
    import datasets

    from mblip.demo.tiny import tiny_config, tiny_processor
    from mblip.modeling_mblip import MBlipForConditionalGeneration
    from mblip.training import MBlipTrainer, MBlipTrainingArguments

    processor = tiny_processor(family)
    torch.manual_seed(0)
    model = MBlipForConditionalGeneration(tiny_config(family, len(processor.tokenizer)))
    model.vision_model.requires_grad_(False)  # frozen, as in mBLIP training
    data = datasets.Dataset.from_list(rows())

    def collate(examples):
        return dict(
            processor(
                images=[e["image"] for e in examples],
                text=[e["prompt"] for e in examples],
                text_target=[e["target"] for e in examples],
            )
        )

    args = MBlipTrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        max_grad_norm=0.0,
        warmup_steps=0,
        learning_rate=1e-3,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    capture = CaptureGradients()
    trainer = MBlipTrainer(model=model, args=args, train_dataset=data, data_collator=collate, callbacks=[capture])
    trainer.train()
    loss = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    return capture.gradients, loss, trainer


def main():
    family, batch, accumulation, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if not torch.accelerator.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")  # accelerate's gloo group on CPU, as train_mblip.main does
    gradients, loss, trainer = one_step(family, batch, accumulation, os.path.dirname(out))
    if trainer.is_world_process_zero():
        save_file({**gradients, "_logged_loss": torch.tensor([loss])}, out)


if __name__ == "__main__":
    main()
