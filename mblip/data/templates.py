"""Per-task prompt templates, and how an example becomes the (context, label) pair train_mblip.py reads.

Each task has two template families, mixed as in the paper:
- *named* templates are English and name the target language ("Caption the image in German."); the paper used these
  to tell the model which language to answer in;
- *plain* templates carry no language name ("Caption the image."). They are machine-translated once per language, so
  the whole prompt is in the target language.

The paper cycled through the union of both families (``data/mscoco/generate_train.py``), so each template is equally
likely; ``translated_prompt_share`` sets the family split explicitly instead. Some official tasks use a third kind:
*untranslated* English templates that name no language and are used as they are in every language (caption matching,
ImageNet "decide", A-OKVQA explanations); their yes/no answers stay English too.

VQA and question generation keep the answer in English unless a translated answer is drawn (``translated_label_share``,
half in the official ``data/vqa/generate_train.py``); the template then names the answer's language (VQA) or the
question's (question generation).

Placeholders such as ``{question}`` are filled with the example's (translated) fields. Before a template is sent to
the translation model they become ``{0}``, ``{1}``...; a translation that loses, duplicates or invents one is
dropped, never repaired.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from ..prompts import CAPTION_TEMPLATE
from .languages import ENGLISH, Language, get_language


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
    # English prompts used as they are in every language: no language named, never translated.
    untranslated: tuple[Template, ...] = ()
    # yes/no answers stay English (the official matching and "decide" tasks) instead of being translated.
    english_answers: bool = False
    # A short-answer slot whose translation is used only for a drawn share of the examples (and only when it passes
    # the filters and differs from the English); otherwise the English value is kept.
    optional_translation: str | None = None
    # Which language the named templates name when the optional slot stays English: "answer" names English (VQA:
    # "Short English answer:"), "target" names the example's language (question generation: the question is it).
    named_language: str = "target"
    # Official A-OKVQA tasks are English only: every example stays English whatever the sampling rule.
    english_only: bool = False

    def placeholder_only(self, text: str) -> bool:
        return _PLACEHOLDER.sub("", text).strip() == ""

    @property
    def yes_no(self) -> bool:
        """The label is a yes/no decision rendered with the template's own answers."""
        return "match" in self.slots.values()

    @property
    def prompt_slots(self) -> tuple[str, ...]:
        """Slots filled into the prompt (the rest appear in the label)."""
        prompts = [t.prompt for t in self.named + self.plain + self.untranslated]
        return tuple(s for s in self.slots.values() if any("{" + s + "}" in p for p in prompts))


_CAPTION_NAMED = (
    CAPTION_TEMPLATE,  # "Caption the image in {language}.": predict.py's and app.py's prompt
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
# Question generation (data/vqa/generate_train.py): the answer is in the prompt, the question is the target.
_VQG_NAMED = (
    "Given the image, generate a question in {language} whose answer is: {answer}. Question:",
    'Based on the image, create a question (in {language}) for which the answer is "{answer}".',
    "From the image provided, come up with a {language} question that leads to the reply: {answer}. Question:",
    'What is a {language} question for the image with the answer "{answer}"?',
    'Given the image, what would be a {language} question that has as answer "{answer}"?',
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
# A-OKVQA explanations (data/aokvqa/generate_train.py), verbatim: the double space in the fourth is the official one.
_EXPLANATION = (
    "Question: {question}: Answer: {answer}. Explanation:",
    "Question: {question}: Answer: {answer}. The reason is because",
    'The answer to the question "{question}" is "{answer}". Why?',
    'Why is the answer to the question "{question}"  "{answer}"?',
    'Explain why the answer to the question "{question}" is "{answer}".',
)
_DOES = ("Yes, it does.", "No, it does not.")
_IS = ("Yes, it is.", "No, it is not.")
_WOULD = ("Yes, it would.", "No, it would not.")
# Caption matching (data/pretrain/generate_match_train.py), verbatim, typos and double space included; trailing
# spaces are dropped because every rendered prompt is stripped.
_MATCHING = (
    Template('Does "{caption}" accurately describe the image?', _DOES),
    Template('Does the caption "{caption}" fit the picture?', _DOES),
    Template('Does  "{caption}" correctly summarize the image?', _DOES),
    Template('Is "{caption}" a good image description?', _IS),
    Template('Is "{caption}" a correct caption for the picture?', _IS),
    Template('Is the caption "{caption}" a good match for the image?', _IS),
    Template("Decide if the following caption accurately describes the image: {caption}. Answer:", _DOES),
    Template("Is this caption a good match for the picture? {caption}. Answer:", _IS),
    Template("Decide if this captions is a correct summary of the image: {caption}.", _IS),
    Template('Would "{caption}" be a good image summary?', _WOULD),
    Template('Would the caption "{caption}" fit the picture?', _WOULD),
    Template('Could you use "{caption}" as a caption for the image?', ("Yes, you could.", "No, you could not.")),
)
# ImageNet (data/imagenet/generate_train.py): classification names the language; "decide" asks about a class name in
# the example's language with an English prompt and English answers.
_CLASSIFICATION_NAMED = (
    "What is the main focus of the image? Short {language} answer:",
    "What is in the image? Answer briefly in {language}.",
    "This is an image of what? Answer briefly in {language}.",
    "What is the central object in the image? Give a short {language} answer.",
    "The focus of the image is of what? Short {language} answer:",
    "Question: This is an image of what? Answer briefly in {language}.",
    "What is at the center of this picture? Short {language} answer:",
    "Give a short answer in {language} to the following question. What is the main thing shown in the image?",
    "Complete the sentence in {language}. This is a photo of a",
    "Name the main thing of this photo in {language}:",
    "In less than 3 words in {language}, what can be seen in this image?",
)
_DECIDE = (
    Template("Does this image show a {class_name}?", _DOES),
    Template("Is there a {class_name}?", ("Yes, there is.", "No, there is not.")),
    Template("Are there any {class_name} in the picture?", ("Yes, there are.", "No, there are not.")),
    Template("Does the image contain a {class_name}?", _DOES),
    Template("Yes or no, there is a {class_name} in the photo.", ("Yes", "No")),
    Template("Yes or no, there is a {class_name} visible in the image.", ("Yes", "No")),
    Template("Does this picture have a {class_name} in it?", _DOES),
    Template("Can you see a {class_name} in the image?", ("Yes, you can.", "No, you can not.")),
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
            # Official: the six named templates only, naming the answer's language ("Short English answer:" when
            # the answer stayed English).
            named=_templates(_VQA_NAMED),
            plain=(),
            targets=("{answer}",),
            description="visual question answering (VQAv2); context = question, label = short answer",
            required=("context", "label"),
            optional_translation="answer",
            named_language="answer",
        ),
        TaskSpec(
            "vqg",
            {"context": "answer", "label": "question"},
            translated=("answer", "question"),
            short=("answer",),
            named=_templates(_VQG_NAMED),
            plain=(),
            targets=("{question}",),
            description="visual question generation (VQAv2); context = short answer, label = question",
            required=("context", "label"),
            optional_translation="answer",
            named_language="target",
        ),
        TaskSpec(
            "vqa_rationale",
            {"context": "question", "label": "answer", "rationale": "rationale"},
            translated=("question", "answer", "rationale"),
            short=("answer",),
            named=_templates(_RATIONALE_NAMED),
            plain=_templates(_RATIONALE_PLAIN),
            targets=_RATIONALE_TARGETS,
            description="VQA with rationale (A-OKVQA chain of thought); context = question, label = answer, rationale column",
            required=("context", "label", "rationale"),
        ),
        TaskSpec(
            "explanation",
            {"context": "question", "label": "answer", "rationale": "rationale"},
            translated=(),
            short=(),
            named=(),
            plain=(),
            untranslated=_templates(_EXPLANATION),
            targets=("{rationale}",),
            description="answer explanation (A-OKVQA, English only); context = question, label = answer, rationale column",
            required=("context", "label", "rationale"),
            english_only=True,
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
            named=(),
            plain=(),
            untranslated=_MATCHING,
            targets=(),
            description="image-caption matching; context = caption to check, label = yes/no (answers stay English)",
            required=("context", "label"),
            english_answers=True,
        ),
        TaskSpec(
            "classification",
            {"label": "class_name"},
            translated=("class_name",),
            short=("class_name",),
            named=_templates(_CLASSIFICATION_NAMED),
            plain=(),
            targets=("{class_name}",),
            description="image classification (ImageNet); label = class name",
            required=("label",),
        ),
        TaskSpec(
            "decide",
            {"context": "class_name", "label": "match"},
            translated=("class_name",),
            short=("class_name",),
            named=(),
            plain=(),
            untranslated=_DECIDE,
            targets=(),
            description='ImageNet "decide"; context = class name to check, label = yes/no (answers stay English)',
            required=("context", "label"),
            english_answers=True,
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
    "vqav2": "vqa",
    "question_generation": "vqg",
    "explain": "explanation",
    "aokvqa_explanation": "explanation",
    "imagenet_decide": "decide",
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
    if not spec.english_answers:
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
    # English prompts: named ones with the language name filled in, then the untranslated ones; answers translated
    # unless the task keeps them English.
    named: tuple[Template, ...]
    translated: tuple[Template, ...]
    targets: tuple[str, ...]
    dropped: int  # templates lost because a phrase of theirs had no valid translation
    # The named prompts naming English, for examples whose answer stayed English (VQA).
    english_named: tuple[Template, ...] = ()


def build_language_templates(
    spec: TaskSpec, language: Language, translations: Mapping[str, str | None]
) -> LanguageTemplates:
    """Assemble a task's templates for ``language`` from the phrase translations (English: identity)."""

    def tr(phrase: str) -> str | None:
        if language.code == ENGLISH or spec.placeholder_only(phrase):
            return phrase
        return translations.get(phrase)

    def answers(template: Template) -> tuple[str, str] | None | bool:
        if template.answers is None or spec.english_answers:
            return template.answers
        pair = tuple(tr(a) for a in template.answers)
        return pair if all(pair) else False

    named, english_named, translated, dropped = [], [], [], 0
    for template in spec.named:
        ans = answers(template)
        if ans is False:
            dropped += 1
            continue
        named.append(Template(template.prompt.replace("{language}", language.name), ans))
        english_named.append(Template(template.prompt.replace("{language}", get_language(ENGLISH).name), ans))
    for template in spec.untranslated:
        ans = answers(template)
        if ans is False:
            dropped += 1
            continue
        named.append(Template(template.prompt, ans))
    for template in spec.plain:
        prompt, ans = tr(template.prompt), answers(template)
        if prompt is None or ans is False:
            dropped += 1
            continue
        translated.append(Template(prompt, ans))
    targets = [t for t in (tr(target) for target in spec.targets) if t is not None]
    dropped += len(spec.targets) - len(targets)
    return LanguageTemplates(
        spec.name,
        language.code,
        tuple(named),
        tuple(translated),
        tuple(targets),
        dropped,
        tuple(english_named) if spec.named_language == "answer" else (),
    )


def use_translation(english: str, translation: str | None, u: float, share: float) -> bool:
    """The official answer rule of VQA and question generation: a translated answer that exists (here: passed the
    filters) and differs from the English one is used when ``u < share``; otherwise the English answer stays."""
    return translation is not None and translation.strip() != str(english).strip() and u < share


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
    answer_in_english: bool = False,
) -> tuple[str, str]:
    """(context, label) of one example from its slot values (already translated).

    ``answer_in_english``: the task's optional translation was not used, so a task whose named templates name the
    answer's language names English.
    """
    if answer_in_english and templates.english_named:
        templates = replace(templates, named=templates.english_named)
    template = choose_template(templates, u_prompt, translated_share)
    # format_map parses only the template: braces inside user text are left alone.
    context = template.prompt.format_map(slots)
    if spec.yes_no:
        label = template.answers[0] if slots["match"] else template.answers[1]
    else:
        if not templates.targets:
            raise ValueError(f"No usable {spec.name!r} target template for language {templates.language!r}.")
        targets = templates.targets
        label = targets[min(int(u_target * len(targets)), len(targets) - 1)].format_map(slots)
    return context.strip(), label.strip()
