"""Which prompt template `python -m eval` uses: the paper's English prompt (each task's, from mblip/prompts.py), its
translation, or the user's override.

A template is a `str.format` string. Placeholders: the example's fields ({question} for xGQA, MaXM and POPE,
{hypothesis} for XVNLI, {statement} for MaRVL; none for captioning), {language} (the target language's English
name, as in "Caption in {language}: ") and a bare {} for the example's one field; `render` (mblip/prompts.py) fills
them in.

`--prompt_language target` uses the translations below: the paper's prompt written in the language of the examples.
They are this toolkit's translations, not the paper's (the paper prompts in English); answers stay in the
language the English prompt asks for, so the metrics are unchanged. Languages without a translation here need
`--prompt FILE.json`, a JSON object {language: template}.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from mblip.prompts import ENGLISH_ANSWER_TEMPLATE, EVAL_CAPTION_TEMPLATE, XVNLI_TEMPLATE

from .tasks import Task


_CAPTION = {
    "ar": "وصف الصورة باللغة العربية: ",
    "bn": "বাংলায় ছবির বিবরণ: ",
    "cs": "Popisek v češtině: ",
    "da": "Billedtekst på dansk: ",
    "de": "Bildunterschrift auf Deutsch: ",
    "el": "Λεζάντα στα ελληνικά: ",
    "en": EVAL_CAPTION_TEMPLATE.format(language="English"),
    "es": "Descripción de la imagen en español: ",
    "fa": "توضیح تصویر به فارسی: ",
    "fi": "Kuvateksti suomeksi: ",
    "fr": "Légende en français : ",
    "he": "כיתוב בעברית: ",
    "hi": "हिंदी में चित्र का विवरण: ",
    "hr": "Opis slike na hrvatskom: ",
    "hu": "Képaláírás magyarul: ",
    "id": "Keterangan gambar dalam bahasa Indonesia: ",
    "it": "Didascalia in italiano: ",
    "ja": "日本語のキャプション：",
    "ko": "한국어 캡션: ",
    "nl": "Bijschrift in het Nederlands: ",
    "no": "Bildetekst på norsk: ",
    "pl": "Podpis po polsku: ",
    "pt": "Legenda em português: ",
    "ro": "Descriere în limba română: ",
    "ru": "Подпись на русском языке: ",
    "sv": "Bildtext på svenska: ",
    "sw": "Maelezo ya picha kwa Kiswahili: ",
    "th": "คำบรรยายภาพภาษาไทย: ",
    "tr": "Türkçe resim altyazısı: ",
    "uk": "Підпис українською мовою: ",
    "vi": "Chú thích bằng tiếng Việt: ",
    "zh": "中文图片描述：",
}

TRANSLATED_PROMPTS: dict[str, dict[str, str]] = {
    "xm3600": _CAPTION,
    "xflickrco": _CAPTION,
    "xgqa": {
        "bn": "প্রশ্ন: {question} ইংরেজিতে সংক্ষিপ্ত উত্তর:",
        "de": "Frage: {question} Kurze Antwort auf Englisch:",
        "en": ENGLISH_ANSWER_TEMPLATE,
        "id": "Pertanyaan: {question} Jawaban singkat dalam bahasa Inggris:",
        "ko": "질문: {question} 영어로 짧은 답변:",
        "pt": "Pergunta: {question} Resposta curta em inglês:",
        "ru": "Вопрос: {question} Краткий ответ на английском:",
        "zh": "问题：{question} 用英语简短回答：",
    },
    "maxm": {
        "en": ENGLISH_ANSWER_TEMPLATE,
        "fr": "Question : {question} Réponse courte en français :",
        "hi": "प्रश्न: {question} हिंदी में संक्षिप्त उत्तर:",
        "iw": "שאלה: {question} תשובה קצרה בעברית:",
        "ro": "Întrebare: {question} Răspuns scurt în limba română:",
        "th": "คำถาม: {question} คำตอบสั้น ๆ เป็นภาษาไทย:",
        "zh": "问题：{question} 用中文简短回答：",
    },
    "xvnli": {
        "ar": 'هل من المؤكد أن "{hypothesis}" صحيح؟ نعم، لا، أم ربما؟ أجب باللغة الإنجليزية:',
        "en": XVNLI_TEMPLATE,
        "es": '¿Es seguro que "{hypothesis}" es verdad? ¿Sí, no o tal vez? Responde en inglés:',
        "fr": "Est-il certain que « {hypothesis} » est vrai ? Oui, non ou peut-être ? Répondez en anglais :",
        "ru": "Верно ли наверняка, что «{hypothesis}»? Да, нет или возможно? Ответьте на английском:",
    },
    "marvl": {
        "id": 'Berdasarkan kedua gambar, apakah benar bahwa "{statement}"? Ya atau tidak? Jawab dalam bahasa Inggris:',
        "sw": 'Kulingana na picha hizi mbili, je, ni sahihi kusema "{statement}"? Ndiyo au hapana? Jibu kwa Kiingereza:',
        "ta": 'இரண்டு படங்களின் அடிப்படையில், "{statement}" என்று சொல்வது சரியா? ஆம் அல்லது இல்லை? ஆங்கிலத்தில் பதிலளிக்கவும்:',
        "tr": 'İki resme göre "{statement}" demek doğru mu? Evet mi, hayır mı? İngilizce cevap verin:',
        "zh": "根据这两张图片，说“{statement}”是否正确？是还是否？请用英语回答：",
    },
    "pope": {"en": "{question}"},
    # English-only benchmarks: the paper's prompt is already in the target language.
    "coco": {"en": EVAL_CAPTION_TEMPLATE.format(language="English")},
    "vqav2": {"en": ENGLISH_ANSWER_TEMPLATE},
    "chair": {"en": "{instruction}"},
}

PROMPT_LANGUAGES = ("en", "target")


def load_override(prompt: str | None) -> str | dict[str, str] | None:
    """`--prompt`: a template, or the path of a JSON file {language: template}."""
    if prompt is None:
        return None
    if prompt.endswith(".json"):
        path = Path(prompt)
        if not path.is_file():
            raise ValueError(f"--prompt {prompt!r} looks like a JSON file of templates, but there is no such file")
        with open(path, encoding="utf-8") as handle:
            templates = json.load(handle)
        if not isinstance(templates, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in templates.items()
        ):
            raise ValueError(f"{prompt}: expected a JSON object mapping language codes to template strings")
        return templates
    return prompt


def _placeholders(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise ValueError(f"Prompt template {template!r} is not a valid format string: {error}") from error


def check_template(template: str, task: Task, fields: list[str]) -> None:
    """ValueError naming the allowed placeholders when `template` uses another one."""
    allowed = set(fields) | {"language", ""}
    unknown = [name for name in _placeholders(template) if name not in allowed]
    if unknown:
        shown = ", ".join("{" + f + "}" for f in [*fields, "language"])
        raise ValueError(f"Prompt template {template!r} for {task.title} uses {unknown}; allowed placeholders: {shown}")
    if "" in _placeholders(template) and len(fields) != 1:
        raise ValueError(
            f"Prompt template {template!r}: a bare {{}} needs exactly one example field; {task.title} has {fields}"
        )


def template_for(task: Task, lang: str, override=None, prompt_language: str = "en") -> str:
    """The template for one language: the override if given, else the paper's English prompt or its translation."""
    if isinstance(override, str):
        return override
    if isinstance(override, dict):
        if lang not in override:
            raise ValueError(f"The prompt file has no template for {lang!r} (it has: {', '.join(sorted(override))})")
        return override[lang]
    if prompt_language == "en":
        return task.prompt
    if prompt_language == "target":
        translations = TRANSLATED_PROMPTS.get(task.name, {})
        if lang not in translations:
            raise ValueError(
                f"No translated {task.title} prompt for {lang!r} (translations exist for: "
                f"{', '.join(sorted(translations)) or 'none'}); pass --prompt FILE.json with your own"
            )
        return translations[lang]
    raise ValueError(f"--prompt_language must be one of {PROMPT_LANGUAGES}, got {prompt_language!r}")
