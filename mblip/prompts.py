"""The prompts an mBLIP model is used with, in one place: the paper's captioning, VQA and classification prompts.

Every tool that prompts a model takes its prompts from here: predict.py (the default prompt and --lang), app.py (its
Caption and Question tasks), `python -m eval` (each benchmark's default prompt, mblip/evaluation/tasks; the
translations of --prompt_language target are in mblip/evaluation/prompts.py), validation by generation during
training (mblip/validation.py), the offline demo's training rows (mblip/demo/mix.py), the task fine-tuning rows
(mblip/data/finetune.py) and the model card's usage snippet (mblip/cards.py).

A template is a `str.format` string. {language} is the target language's English name ("German"); the other
placeholders are an example's fields ({question}, {hypothesis}, {statement}); a bare {} stands for an example's one
field (`render`).

The task mix's training templates (mblip/data/templates.py: many per task, some machine-translated) are training
data generation, not these; its first named caption template is CAPTION_TEMPLATE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from mblip.evaluation.tasks import Example


# predict.py (--lang) and app.py: the task mix's first named caption template, so a model trained on the mix
# captions in the language it names.
CAPTION_TEMPLATE = "Caption the image in {language}."
DEFAULT_PROMPT = CAPTION_TEMPLATE.format(language="English")  # predict.py without --prompt or --lang
# The paper's VQA prompt: MaXM and app.py ask for the answer in {language}, xGQA and VQAv2 in English.
QUESTION_TEMPLATE = "Question: {question} Short answer in {language}:"
ENGLISH_ANSWER_TEMPLATE = QUESTION_TEMPLATE.replace("{language}", "English")  # "... Short answer in English:"

# The paper's benchmark prompts (the official evaluation configs), each task's default in mblip/evaluation/tasks.
EVAL_CAPTION_TEMPLATE = "Caption in {language}: "  # XM3600, xFlickrCO, COCO
XVNLI_TEMPLATE = 'Is it guaranteed true that "{hypothesis}"? Yes, no, or maybe? Answer in English:'
# The official MaRVL test configuration's template (it drops the datamodule's trailing "Answer in English:").
MARVL_TEMPLATE = 'Based on the two images, is it correct to say "{statement}"? Yes or no?'


def render(template: str, example: Example, language_name: str) -> str:
    """The prompt for one example: its fields and the language's name filled into `template`."""
    positional = list(example.fields.values())[:1] if len(example.fields) == 1 else []
    return template.format(*positional, language=language_name, **example.fields)
