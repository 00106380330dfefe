"""The demo's training data, in the column layout of mBLIP's data release (image_id, context, label, lang, task).

Prompts are the evaluation's own templates (eval/tasks; all prompts come from mblip/prompts.py), so that what the
models are trained on is what they are evaluated with: captioning "Caption in {language}: " with XM3600's spelling of
the language names, and xGQA's "Question: {question} Short answer in English:". A share of the captions uses the
prompt of predict.py and app.py ("Caption the image in {language}."), so that those tools work on the demo's model as
they are.
"""

from __future__ import annotations

import random

from mblip.evaluation.tasks import Example, get_task
from mblip.predict import LANGUAGES as PREDICT_LANGUAGE_NAMES
from mblip.prompts import CAPTION_TEMPLATE, render

from .world import LANGUAGES, Scene, caption, image_name, questions, stable_rng


XM3600 = get_task("xm3600")
XGQA = get_task("xgqa")
APP_PROMPT_SHARE = 0.25  # of caption rows; the rest use the evaluation's prompt
QUESTIONS_PER_SCENE = 2


def caption_prompt(lang: str, rng: random.Random | None = None) -> str:
    if rng is not None and rng.random() < APP_PROMPT_SHARE:
        return CAPTION_TEMPLATE.format(language=PREDICT_LANGUAGE_NAMES[lang])
    return render(XM3600.prompt, Example("", [], {}, []), XM3600.language_name(lang))


def question_prompt(question: str) -> str:
    return render(XGQA.prompt, Example("", [], {"question": question}, []), "English")


def scene_rows(scene: Scene, rng: random.Random, languages=LANGUAGES) -> list[dict]:
    """One caption and QUESTIONS_PER_SCENE questions for a scene, each in a language drawn from `languages`:
    like mBLIP's task mix, where every example is translated into one sampled language."""
    lang = rng.choice(languages)
    rows = [
        {
            "image_id": image_name(scene),
            "context": caption_prompt(lang, rng),
            "label": caption(scene, lang),
            "lang": lang,
            "task": "caption",
        }
    ]
    for question in questions(scene, QUESTIONS_PER_SCENE, rng):
        lang = rng.choice(languages)
        rows.append(
            {
                "image_id": image_name(scene),
                "context": question_prompt(question.text(lang)),
                "label": question.answer,
                "lang": lang,
                "task": f"vqa-{question.kind}",
            }
        )
    return rows


def image_rows(scenes: list[Scene], seed: int, name: str, languages=LANGUAGES) -> list[dict]:
    """The image-text rows of a training stage; `name` keys the random draws, so each stage has its own."""
    rng = stable_rng(seed, "rows", name)
    return [row for scene in scenes for row in scene_rows(scene, rng, languages)]


def text_rows(scenes: list[Scene], seed: int) -> list[dict]:
    """Text-only data for the multilingual LM: the sentences of the world in every language, never an image.

    - captions after their prompt (the LM learns each language's grammar and what a caption looks like);
    - questions after their prompt with English answers (the answer's type; without the image, not its value);
    - translations between English and each language (parallel text, as multilingual LLMs see in pre-training).
    """
    rng = stable_rng(seed, "text")
    rows = []
    for scene in scenes:
        for lang in LANGUAGES:
            rows.append({"context": caption_prompt(lang, rng), "label": caption(scene, lang), "task": "caption"})
        for question in questions(scene, QUESTIONS_PER_SCENE, rng):
            lang = rng.choice(LANGUAGES)
            rows.append({"context": question_prompt(question.text(lang)), "label": question.answer, "task": "vqa"})
            other = rng.choice(LANGUAGES[1:])
            rows.append(translation(question.text("en"), question.text(other), "en", other, rng))
        other = rng.choice(LANGUAGES[1:])
        rows.append(translation(caption(scene, "en"), caption(scene, other), "en", other, rng))
    return rows


def translation(english: str, text: str, en: str, lang: str, rng: random.Random) -> dict:
    source, target, source_lang, target_lang = (
        (english, text, en, lang) if rng.random() < 0.5 else (text, english, lang, en)
    )
    names = XM3600.language_names
    return {"context": f"{names[source_lang]}: {source} {names[target_lang]}: ", "label": target, "task": "translation"}
