"""Quality filters (data/filters.py) and prompt templates (data/templates.py) on hand-made strings."""

import pytest

from mblip.data.filters import (
    FilterConfig,
    FilterReport,
    check_fields,
    check_translation,
    has_repetition_loop,
    introduces_repetition,
    is_copy,
    is_empty,
    is_too_long,
)
from mblip.data.languages import get_language
from mblip.data.templates import (
    TASKS,
    Template,
    build_language_templates,
    choose_template,
    decode_placeholders,
    encode_placeholders,
    parse_match_label,
    phrases_to_translate,
    render_example,
)


GERMAN = "Ein Hund läuft am Strand entlang."
ENGLISH = "A dog runs along the beach."


# ---- filters --------------------------------------------------------------------------------------------------------


def test_empty():
    assert is_empty("") and is_empty("  \n") and not is_empty("Ja")


def test_too_long():
    assert not is_too_long(ENGLISH, GERMAN)
    assert is_too_long(ENGLISH, GERMAN * 4)  # 4 x 33 chars > 3 x 27 + 20
    assert is_too_long("yes", "Ja, das ist ganz sicher so.", slack=8)  # short answers stay short
    assert not is_too_long("yes", "Ja", slack=8)
    assert is_too_long("x" * 3000, "y" * 4001, max_ratio=10)  # absolute cap


def test_copy():
    assert is_copy(ENGLISH, "a dog runs along the beach")  # case and punctuation do not hide a copy
    assert not is_copy(ENGLISH, GERMAN)
    assert not is_copy("Frisbee", "Frisbee")  # single words and names may stay the same
    assert not is_copy("2", "2")


def test_repetition_loops_in_words_and_characters():
    assert has_repetition_loop("ein Hund ein Hund ein Hund ein Hund am Strand")
    assert not has_repetition_loop("ein Hund und noch ein Hund am Strand")
    assert has_repetition_loop("一只狗一只狗一只狗一只狗在跑")  # no spaces: characters are the units
    assert not has_repetition_loop("一只狗在海滩上奔跑。")
    # Only loops the translation introduces count.
    assert introduces_repetition("A dog.", "Hund Hund Hund Hund")
    assert not introduces_repetition("ha ha ha ha", "ha ha ha ha")


def test_check_translation_reasons_in_order():
    config = FilterConfig()
    assert check_translation(ENGLISH, GERMAN, "de", config).reason is None
    assert check_translation(ENGLISH, GERMAN, "de", config).langid == "verified"
    assert check_translation(ENGLISH, None, "de", config, status="source_too_long").reason == "source_too_long"
    assert check_translation(ENGLISH, " ", "de", config).reason == "empty"
    assert check_translation(ENGLISH, GERMAN, "de", config, status="truncated").reason == "too_long"
    assert check_translation(ENGLISH, ENGLISH, "de", config).reason == "copy"
    assert check_translation(ENGLISH, "Hund Hund Hund Hund Hund", "de", config).reason == "repetition"
    assert check_translation(ENGLISH, "The dog is running along the beach.", "de", config).reason == "wrong_language"
    # Every table language has a verdict (German is not Cebuano); short texts are kept but reported as unchecked.
    assert check_translation(ENGLISH, GERMAN, "ceb", config).reason == "wrong_language"
    assert check_translation("red", "rot", "de", config, short=True).langid == "unchecked_short"
    relaxed = FilterConfig(check_language=False, drop_truncated=False)
    assert check_translation(ENGLISH, "The dog is running along the beach.", "de", relaxed).reason is None
    assert check_translation(ENGLISH, GERMAN, "de", relaxed, status="truncated").reason is None


def test_check_fields_names_the_first_failure():
    reason, langids = check_fields(
        ["What color is the bus?", "red"],
        ["Welche Farbe hat der Bus?", ""],
        ["ok", "ok"],
        [False, True],
        "de",
        FilterConfig(),
    )
    assert reason == "empty" and langids == []
    reason, langids = check_fields([ENGLISH], [GERMAN], ["ok"], [False], "de", FilterConfig())
    assert reason is None and langids == ["verified"]


def test_report_counts_merge_and_round_trip():
    a, b = FilterReport(), FilterReport()
    a.add("de", "caption", None, ["verified"])
    a.add("de", "caption", "copy")
    b.add("de", "vqa", "copy")
    b.add("sw", "vqa", None, ["unchecked_short"])
    merged = FilterReport.from_dict(a.to_dict()).merge(FilterReport.from_dict(b.to_dict()))
    d = merged.to_dict()
    assert d["languages"]["de"] == {"assigned": 3, "kept": 1, "dropped": {"copy": 2}, "langid": {"verified": 1}}
    assert d["tasks"]["vqa"] == {"assigned": 2, "dropped_copy": 1, "kept": 1}
    assert merged.totals() == {
        "assigned": 4,
        "kept": 2,
        "dropped": {"copy": 2},
        "langid": {"verified": 1, "unchecked_short": 1},
    }


def test_report_names_the_language_identifier():
    from mblip.data.languages import LANGID_IDENTIFIER

    report = FilterReport()
    report.add("de", "caption", "wrong_language")
    assert report.to_dict()["langid_identifier"] == LANGID_IDENTIFIER
    assert FilterReport.from_dict(report.to_dict()).identifier == LANGID_IDENTIFIER
    # An empty report takes the identifier of what is merged into it (translate.py merges shards into one).
    assert FilterReport().merge(FilterReport.from_dict(report.to_dict())).identifier == LANGID_IDENTIFIER
    # Shards written before the identifier was recorded, merged with new ones: the mix is named, not hidden.
    old = report.to_dict()
    del old["langid_identifier"]
    mixed = FilterReport.from_dict(old).merge(report)
    assert mixed.identifier == f"mixed: {LANGID_IDENTIFIER}, unrecorded"
    assert FilterReport.from_dict(mixed.to_dict()).identifiers == {LANGID_IDENTIFIER, "unrecorded"}


# ---- templates ------------------------------------------------------------------------------------------------------


def test_placeholders_survive_or_the_template_is_dropped():
    encoded, names = encode_placeholders("Question: {question} Brief answer:")
    assert encoded == "Question: {0} Brief answer:" and names == ("question",)
    assert decode_placeholders("Frage: {0} Kurze Antwort:", names) == "Frage: {question} Kurze Antwort:"
    assert decode_placeholders("Frage: Kurze Antwort:", names) is None  # lost
    assert decode_placeholders("{0} Frage: {0}", names) is None  # duplicated
    assert decode_placeholders("Frage {1}: {0}", names) is None  # invented
    assert decode_placeholders("Frage {question}: {0}", names) is None  # stray braces


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_template_renders_with_its_task_slots(task):
    spec = TASKS[task]
    slots = {slot: f"<{slot}>" for slot in spec.slots.values()}
    slots["match"] = True
    english = build_language_templates(spec, get_language("en"), {})
    assert english.dropped == 0 and english.named + english.translated
    for u in [i / 20 for i in range(20)]:
        context, label = render_example(spec, english, slots, u, u)
        assert "{" not in context and "{" not in label and context and label
        for role, slot in spec.slots.items():
            if role == "context" or slot in spec.prompt_slots:  # the question, instruction, caption... is in the prompt
                assert f"<{slot}>" in context
            elif slot != "match":  # the target and the rationale are in the label
                assert f"<{slot}>" in label
    # Templates name the language in English where they name it at all.
    assert all("{language}" in t.prompt for t in spec.named)
    assert all("{language}" not in t.prompt for t in spec.plain)


def test_language_templates_from_translations_and_drops():
    spec = TASKS["caption"]
    translations = {p: f"DE {p}" for p in phrases_to_translate(spec)}
    translations["Summarize the image."] = None  # failed validation
    german = build_language_templates(spec, get_language("de"), translations)
    assert german.dropped == 1 and len(german.translated) == 4
    assert german.named[0].prompt == "Caption the image in German."
    assert german.translated[0].prompt == "DE Caption the image."


def test_matching_answers_stay_english_as_in_the_official_code():
    spec = TASKS["matching"]
    assert phrases_to_translate(spec) == []  # neither the prompts nor the yes/no answers are translated
    german = build_language_templates(spec, get_language("de"), {})
    context, label = render_example(spec, german, {"caption": "Eine Katze", "match": False}, 0.0, 0.0)
    assert context == 'Does "Eine Katze" accurately describe the image?' and label == "No, it does not."
    assert parse_match_label("Yes") is True and parse_match_label(0) is False and parse_match_label("maybe") is None


def test_template_mix_follows_the_papers_rule_or_the_given_share():
    named = tuple(Template(f"named {i}") for i in range(6))
    translated = tuple(Template(f"translated {i}") for i in range(5))
    from mblip.data.templates import LanguageTemplates

    templates = LanguageTemplates("caption", "de", named, translated, ("{caption}",), 0)
    us = [(i + 0.5) / 1100 for i in range(1100)]
    picks = [choose_template(templates, u).prompt for u in us]
    assert {p: picks.count(p) for p in set(picks)} == {t.prompt: 100 for t in named + translated}  # uniform over all 11
    picks = [choose_template(templates, u, translated_share=0.8).prompt for u in us]
    assert sum(p.startswith("translated") for p in picks) == 880
    only_named = LanguageTemplates("caption", "de", named, (), ("{caption}",), 5)
    assert choose_template(only_named, 0.99, translated_share=1.0).prompt.startswith("named")
