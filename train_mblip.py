#!/usr/bin/env python
r"""Re-align BLIP-2's vision stack to a multilingual LLM with quantized LoRA: mBLIP's training, as a Trainer run.

Instruction training from parts (the paper's defaults: Q-Former, queries, projection and LoRA on all LLM linear layers;
learning rates 5e-5 projection / 1e-5 Q-Former / 2e-4 LoRA):

    accelerate launch train_mblip.py \
        --vision_model_name_or_path Salesforce/blip2-flan-t5-xl --language_model_name_or_path bigscience/mt0-xl \
        --train_file mix/train.jsonl --image_root images/ --output_dir runs/mblip-mt0-xl \
        --load_in_8bit --gradient_checkpointing --per_device_train_batch_size 8 --num_train_epochs 1 --bf16

The paper's warm-up stage (projection only, learning rate 5e-3) adds:

    --freeze_qformer --use_peft false --learning_rate 5e-3

Continue from an mBLIP checkpoint with --model_name_or_path instead of the two parts. Any argument can also come from
one JSON or YAML file: `accelerate launch train_mblip.py args.yaml`. A killed run resumes from the last checkpoint in
output_dir (or --resume_from_checkpoint DIR). The output_dir ends as a complete model repository.

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
