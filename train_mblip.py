#!/usr/bin/env python
r"""Re-align BLIP-2's vision stack to a multilingual LLM with quantized LoRA: mBLIP's training, as a Trainer run.

Instruction training from parts on a GPU; the defaults are the official mT0-XL recipe (8-bit LLM; Q-Former, queries,
projection and LoRA on all LLM linear layers; learning rates 1e-5 projection / 1e-5 Q-Former / 2e-4 LoRA, weight decay
0.1, cosine with 1000 warm-up steps, 8 x 16 = 128 examples per step, 2 epochs, bf16 where supported, checkpointing):

    accelerate launch train_mblip.py \
        --vision_model_name_or_path Salesforce/blip2-flan-t5-xl --language_model_name_or_path bigscience/mt0-xl \
        --train_file mix/train.jsonl --image_root images/ --output_dir runs/mblip-mt0-xl

On CPU, two processes: `accelerate launch --config_file configs/cpu_2proc.yaml train_mblip.py ...
--gradient_accumulation_steps 8`. The official runs are argument files in configs/recipes/ (warm-up, instruction
training for mT0-XL and BLOOMZ-7B, task fine-tuning); the warm-up stage (projection only) adds:

    --freeze_qformer --use_peft false --max_steps 8000 --num_train_epochs 1

Continue from an mBLIP checkpoint with --model_name_or_path instead of the two parts. Any argument can also come from
one JSON or YAML file given first, flags after it overriding it: `accelerate launch train_mblip.py args.yaml
--max_steps 100`. A killed run resumes from the last checkpoint in output_dir (or --resume_from_checkpoint DIR). The
output_dir ends as a complete model repository.

With no arguments at all, `python train_mblip.py` runs the offline demo (demo/realign.py): an English BLIP-2 and a
multilingual LM trained here in miniature, then re-aligned by this script, evaluated in eight languages.
"""

import sys


def main():
    if len(sys.argv) == 1:
        # No arguments: the offline demo, mBLIP in miniature on generated data (mblip/demo/realign.py; options there).
        from mblip.demo.realign import main as demo

        return demo()
    from mblip.training import main as train

    train()


if __name__ == "__main__":
    sys.exit(main())
