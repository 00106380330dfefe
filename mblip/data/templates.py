"""Per-task prompt templates, and how an example becomes the (context, label) pair train_mblip.py reads.

Each task has two template families, mixed as in the paper:
- *named* templates are English and name the target language ("Caption the image in German."); the paper used these
  to tell the model which language to answer in;
- *plain* templates carry no language name ("Caption the image."). They are machine-translated once per language, so
  the whole prompt is in the target language.

The paper cycled through the union of both families (``data/mscoco/generate_train.py``), so each template is equally
likely; ``translated_prompt_share`` sets the family split explicitly instead.

Placeholders such as ``{question}`` are filled with the example's (translated) fields. Before a template is sent to
the translation model they become ``{0}``, ``{1}``...; a translation that loses, duplicates or invents one is
dropped, never repaired.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .languages import ENGLISH, Language


@dataclass(frozen=True)
class Template:
    prompt: str
    # Image-caption matching: the (yes, no) answers that fit this prompt's grammar ("Yes, it does." / "Yes, it is.").
    answers: tuple[str, str] | None = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    # Input role -> slot name. Roles are the input columns after renaming: "context", "label", "rationale".
    slots: Mapping[str, str]
    translated: tuple[str, ...]  # slots translated per example
    short: tuple[str, ...]  # slots that hold short answers and must stay short
    named: tuple[Template, ...]
    plain: tuple[Template, ...]
    targets: tuple[str, ...]  # label templates; placeholder-only ones need no translation
    description: str = ""
    required: tuple[str, ...] = field(default=())  # roles that must be non-empty

    def placeholder_only(self, text: str) -> bool:
        return _PLACEHOLDER.sub("", text).strip() == ""


_CAPTION_NAMED = (
    "Caption the image in {language}.",
    "Short {language} image caption:",
    "Image caption (in {language}):",
    "Briefly describe the image in {language}.",
    "Write a short {language} image description.",
    "Summarize the image in {language}.",
)
_CAPTION_PLAIN = (
    "Caption the image.",
    "Short image caption:",
    "Briefly describe the image.",
    "Write a short image description.",
    "Summarize the image.",
)
_VQA_NAMED = (
    "{question} Short {language} answer:",
    "Question: {question} Brief answer (in {language}):",
    "Give a short answer in {language} to the following question. {question}",
    "Answer the provided question in {language} with three words or less. {question}",
    "What is the {language} answer to this question? {question}",
    "Briefly answer in {language}. {question}",
)
_VQA_PLAIN = (
    "{question} Short answer:",
    "Question: {question} Brief answer:",
    "Give a short answer to the following question. {question}",
    "Answer the provided question with three words or less. {question}",
    "What is the answer to this question? {question}",
)
_RATIONALE_NAMED = (
    "Reason the answer to the following question in {language}. {question}",
    "Think step-by-step in {language} to answer this question. {question}",
    "Answer the following question in {language} and explain your answer. {question}",
)
_RATIONALE_PLAIN = (
    "Reason the answer to the following question. {question}",
    "Use reasoning to come to an answer for this question. {question}",
    "Think step-by-step to answer this question. {question}",
    "Answer the following question and explain your answer. {question}",
    "{question} What is the answer and why?",
)
_RATIONALE_TARGETS = (
    "{rationale} So the answer is {answer}.",
    "{rationale} This means the answer is {answer}.",
    "{rationale} Therefore, the answer is {answer}.",
)
_DOES = ("Yes, it does.", "No, it does not.")
_IS = ("Yes, it is.", "No, it is not.")
_WOULD = ("Yes, it would.", "No, it would not.")
_MATCHING_NAMED = (
    Template('Does "{caption}" accurately describe the image? Answer in {language}.', _DOES),
    Template('Is "{caption}" a correct caption for the picture? Reply in {language}.', _IS),
    Template('Would the caption "{caption}" fit the picture? Answer in {language}.', _WOULD),
)
_MATCHING_PLAIN = (
    Template('Does "{caption}" accurately describe the image?', _DOES),
    Template('Does the caption "{caption}" fit the picture?', _DOES),
    Template('Does "{caption}" correctly summarize the image?', _DOES),
    Template('Is "{caption}" a good image description?', _IS),
    Template('Is "{caption}" a correct caption for the picture?', _IS),
    Template('Is the caption "{caption}" a good match for the image?', _IS),
    Template('Would "{caption}" be a good image summary?', _WOULD),
    Template('Would the caption "{caption}" fit the picture?', _WOULD),
)
_CLASSIFICATION_NAMED = (
    "What is shown in the image? Answer in {language}.",
    "Name the main object in the image in {language}.",
    "Which object category does the picture show? Reply in {language}:",
)
_CLASSIFICATION_PLAIN = (
    "What is shown in the image?",
    "Name the main object in the image.",
    "Which object category does the picture show?",
    "What is this a picture of?",
)


def _templates(prompts: Sequence[str]) -> tuple[Template, ...]:
    return tuple(Template(p) for p in prompts)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "caption",
            {"label": "caption"},
            translated=("caption",),
            short=(),
            named=_templates(_CAPTION_NAMED),
            plain=_templates(_CAPTION_PLAIN),
            targets=("{caption}",),
            description="image captioning; label = caption, context ignored",
            required=("label",),
        ),
        TaskSpec(
            "vqa",
            {"context": "question", "label": "answer"},
            translated=("question", "answer"),
            short=("answer",),
            named=_templates(_VQA_NAMED),
            plain=_templates(_VQA_PLAIN),
            targets=("{answer}",),
            description="visual question answering; context = question, label = short answer",
            required=("context", "label"),
        ),
        TaskSpec(
            "vqa_rationale",
            {"context": "question", "label": "answer", "rationale": "rationale"},
            translated=("question", "answer", "rationale"),
            short=("answer",),
            named=_templates(_RATIONALE_NAMED),
            plain=_templates(_RATIONALE_PLAIN),
            targets=_RATIONALE_TARGETS,
            description="VQA with rationale (A-OKVQA); context = question, label = answer, rationale column",
            required=("context", "label", "rationale"),
        ),
        TaskSpec(
            "instruction",
            {"context": "instruction", "label": "response"},
            translated=("instruction", "response"),
            short=(),
            # LLaVA-style turns: the instruction is the prompt and is translated itself, as in the paper.
            named=(),
            plain=_templates(("{instruction}",)),
            targets=("{response}",),
            description="instruction following (LLaVA); context = instruction, label = response",
            required=("context", "label"),
        ),
        TaskSpec(
            "matching",
            {"context": "caption", "label": "match"},
            translated=("caption",),
            short=(),
            named=_MATCHING_NAMED,
            plain=_MATCHING_PLAIN,
            targets=(),
            description="image-caption matching; context = caption to check, label = yes/no",
            required=("context", "label"),
        ),
        TaskSpec(
            "classification",
            {"label": "class_name"},
            translated=("class_name",),
            short=("class_name",),
            named=_templates(_CLASSIFICATION_NAMED),
            plain=_templates(_CLASSIFICATION_PLAIN),
            targets=("{class_name}",),
            description="image classification; label = class name",
            required=("label",),
        ),
    )
}
TASK_ALIASES = {
    "captioning": "caption",
    "captions": "caption",
    "aokvqa": "vqa_rationale",
    "a-okvqa": "vqa_rationale",
    "rationale": "vqa_rationale",
    "llava": "instruction",
    "instruct": "instruction",
    "itm": "matching",
    "image_text_matching": "matching",
    "image_caption_matching": "matching",
    "imagenet": "classification",
}


def resolve_task(name: str) -> str | None:
    key = str(name).strip().lower()
    key = TASK_ALIASES.get(key, key)
    return key if key in TASKS else None


def tasks_message() -> str:
    return "; ".join(f"{spec.name} ({spec.description})" for spec in TASKS.values())


_YES = {"yes", "y", "true", "1", "match", "positive"}
_NO = {"no", "n", "false", "0", "mismatch", "negative"}


def parse_match_label(value) -> bool | None:
    """A matching label ("yes"/"no", booleans, 1/0) as a bool; None when it is neither."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower().rstrip(".")
    return True if text in _YES else False if text in _NO else None


# ----------------------------------------------------------------------------------------------------------------
# Placeholders survive translation as numbered markers
# ----------------------------------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")
_NUMBERED = re.compile(r"\{(\d+)\}")


def encode_placeholders(text: str) -> tuple[str, tuple[str, ...]]:
    """``"{question} Short answer:"`` -> ``("{0} Short answer:", ("question",))``.

    Numbered markers are names a translation model has no reason to translate.
    """
    names: list[str] = []

    def number(match: re.Match) -> str:
        names.append(match.group(1))
        return "{" + str(len(names) - 1) + "}"

    return _PLACEHOLDER.sub(number, text), tuple(names)


def decode_placeholders(translated: str, names: Sequence[str]) -> str | None:
    """Restore the named placeholders, or None when the translation lost, duplicated or invented one."""
    found = _NUMBERED.findall(translated)
    if sorted(int(i) for i in found) != list(range(len(names))):
        return None
    rest = _NUMBERED.sub("", translated)
    if "{" in rest or "}" in rest:
        return None
    return _NUMBERED.sub(lambda m: "{" + names[int(m.group(1))] + "}", translated)


def phrases_to_translate(spec: TaskSpec) -> list[str]:
    """The English template strings of a task that need a translation per language, without duplicates."""
    phrases: list[str] = []
    for template in spec.plain:
        phrases.append(template.prompt)
    for template in spec.plain + spec.named:
        phrases.extend(template.answers or ())
    phrases.extend(spec.targets)
    unique = dict.fromkeys(p for p in phrases if not spec.placeholder_only(p))
    return list(unique)


# ----------------------------------------------------------------------------------------------------------------
# Templates of one language, and rendering
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LanguageTemplates:
    """The templates usable for one task in one language."""

    task: str
    language: str
    named: tuple[Template, ...]  # English prompt with the language name filled in, answers translated
    translated: tuple[Template, ...]
    targets: tuple[str, ...]
    dropped: int  # templates lost because a phrase of theirs had no valid translation


def build_language_templates(
    spec: TaskSpec, language: Language, translations: Mapping[str, str | None]
) -> LanguageTemplates:
    """Assemble a task's templates for ``language`` from the phrase translations (English: identity)."""

    def tr(phrase: str) -> str | None:
        if language.code == ENGLISH or spec.placeholder_only(phrase):
            return phrase
        return translations.get(phrase)

    def answers(template: Template) -> tuple[str, str] | None | bool:
        if template.answers is None:
            return None
        pair = tuple(tr(a) for a in template.answers)
        return pair if all(pair) else False

    named, translated, dropped = [], [], 0
    for template in spec.named:
        ans = answers(template)
        if ans is False:
            dropped += 1
            continue
        named.append(Template(template.prompt.replace("{language}", language.name), ans))
    for template in spec.plain:
        prompt, ans = tr(template.prompt), answers(template)
        if prompt is None or ans is False:
            dropped += 1
            continue
        translated.append(Template(prompt, ans))
    targets = [t for t in (tr(target) for target in spec.targets) if t is not None]
    dropped += len(spec.targets) - len(targets)
    return LanguageTemplates(spec.name, language.code, tuple(named), tuple(translated), tuple(targets), dropped)


def choose_template(templates: LanguageTemplates, u: float, translated_share: float | None = None) -> Template:
    """Pick a prompt template from a uniform number ``u`` in [0, 1).

    ``translated_share=None`` is the paper's rule: uniform over both families together. Otherwise ``u`` below the
    share picks a translated template. When one family is empty the other is used.
    """
    named, translated = templates.named, templates.translated
    if not named and not translated:
        raise ValueError(f"No usable {templates.task!r} template for language {templates.language!r}.")
    if translated_share is None or not named or not translated:
        pool = named + translated
        return pool[min(int(u * len(pool)), len(pool) - 1)]
    if u < translated_share:
        return translated[min(int(u / translated_share * len(translated)), len(translated) - 1)]
    rest = (u - translated_share) / (1 - translated_share)
    return named[min(int(rest * len(named)), len(named) - 1)]


def render_example(
    spec: TaskSpec,
    templates: LanguageTemplates,
    slots: Mapping[str, object],
    u_prompt: float,
    u_target: float,
    translated_share: float | None = None,
) -> tuple[str, str]:
    """(context, label) of one example from its slot values (already translated)."""
    template = choose_template(templates, u_prompt, translated_share)
    # format_map parses only the template: braces inside user text are left alone.
    context = template.prompt.format_map(slots)
    if spec.name == "matching":
        label = template.answers[0] if slots["match"] else template.answers[1]
    else:
        if not templates.targets:
            raise ValueError(f"No usable {spec.name!r} target template for language {templates.language!r}.")
        targets = templates.targets
        label = targets[min(int(u_target * len(targets)), len(targets) - 1)].format_map(slots)
    return context.strip(), label.strip()
