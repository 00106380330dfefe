"""Language table, sampling rules and language identification (data/languages.py)."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from mblip.data.languages import (
    ENGLISH,
    IDENTIFIABLE_LANGUAGES,
    LANGID_IDENTIFIER,
    LANGID_MATCH,
    LANGID_MISMATCH,
    LANGID_SHORT,
    LANGID_UNSUPPORTED,
    LANGUAGE_BY_CODE,
    LANGUAGES,
    TARGET_LANGUAGES,
    allocate_counts,
    apply_floor,
    assign_languages,
    detect_language,
    evaluate_identification,
    get_language,
    language_check,
    language_weights,
    parse_languages,
    plan_language_counts,
    read_texts,
    text_weight,
)


REAL_TEXT = Path(__file__).resolve().parent / "data" / "langid_real_text.jsonl.gz"


# ---- the table --------------------------------------------------------------------------------------------------


def test_table_has_mblips_95_languages_plus_english():
    assert len(LANGUAGES) == 96 and len(TARGET_LANGUAGES) == 95 and ENGLISH not in TARGET_LANGUAGES
    assert len({l.code for l in LANGUAGES}) == 96
    assert len({l.nllb for l in LANGUAGES}) == 96
    assert sum(l.mc4_share for l in LANGUAGES) == pytest.approx(100.0)
    # Spot checks against the official mBLIP scripts.
    assert LANGUAGE_BY_CODE["de"].nllb == "deu_Latn" and LANGUAGE_BY_CODE["de"].name == "German"
    assert LANGUAGE_BY_CODE["fil"].nllb == "tgl_Latn" and LANGUAGE_BY_CODE["he"].nllb == "heb_Hebr"
    assert LANGUAGE_BY_CODE["en"].mc4_share == pytest.approx(43.84274322288712)


def test_nllb_codes_are_flores200_codes():
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    assert {l.nllb for l in LANGUAGES} <= set(FAIRSEQ_LANGUAGE_CODES)


def test_langid_labels_exist_in_py3langid():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    labels = set(LanguageIdentifier.from_model_file(MODEL_FILE).labels)
    for language in LANGUAGES:
        if language.langid is not None:
            assert language.langid in labels, language.code
        assert set(language.accept) <= labels, language.code
    unchecked = sorted(l.code for l in LANGUAGES if l.langid is None)
    assert unchecked == ["ceb", "mi", "ny", "sd", "sm", "su", "yi"]


def test_parse_languages():
    assert parse_languages("all") == list(TARGET_LANGUAGES)
    assert parse_languages("fr, de,iw,de") == ["de", "fr", "he"]  # table order, aliases, no duplicates
    with pytest.raises(
        ValueError, match=r"Unknown language code\(s\) 'xx', 'qq'.*targets \(95\): af \(Afrikaans\), am \(Amharic\)"
    ):
        parse_languages("de,xx,qq")
    with pytest.raises(ValueError, match="english_share"):
        parse_languages("en,de")
    with pytest.raises(ValueError, match="Unknown language code 'klingon'"):
        get_language("klingon")


# ---- sampling rules -----------------------------------------------------------------------------------------------


def test_mc4_rule_is_proportional_to_mc4_shares():
    codes = ["de", "fr", "sw"]
    p = language_weights(codes, "mc4")
    shares = np.array([LANGUAGE_BY_CODE[c].mc4_share for c in codes])
    np.testing.assert_allclose(p, shares / shares.sum())


def test_temperature_rule_follows_its_formula_and_flattens():
    codes = list(TARGET_LANGUAGES)
    shares = np.array([LANGUAGE_BY_CODE[c].mc4_share for c in codes])
    p = language_weights(codes, "temperature", temperature=4.0)
    np.testing.assert_allclose(p, shares**0.25 / (shares**0.25).sum())
    np.testing.assert_allclose(language_weights(codes, "temperature", temperature=1.0), language_weights(codes, "mc4"))
    # Higher temperature: closer to uniform.
    assert p.min() > language_weights(codes, "mc4").min() and p.max() < language_weights(codes, "mc4").max()
    np.testing.assert_allclose(language_weights(codes, "uniform"), np.full(95, 1 / 95))


def test_floor_raises_small_languages_and_keeps_proportions_of_the_rest():
    p = np.array([0.7, 0.2, 0.06, 0.03, 0.01])
    q = apply_floor(p, 0.1)
    assert q.sum() == pytest.approx(1.0) and q.min() >= 0.1 - 1e-12
    np.testing.assert_allclose(q[2:], 0.1)
    assert q[0] / q[1] == pytest.approx(3.5)  # untouched languages keep their ratio
    with pytest.raises(ValueError, match="impossible for 5 languages"):
        apply_floor(p, 0.3)


def test_paper_split_starves_half_the_languages_and_the_default_floor_does_not():
    # The reason the default is not the paper's split: a COCO-sized task (414k captions).
    n = 414_000
    paper = plan_language_counts(n, TARGET_LANGUAGES, rule="mc4", language_floor=0)
    assert sum(paper[c] < 1000 for c in TARGET_LANGUAGES) > 95 / 2
    default = plan_language_counts(n, TARGET_LANGUAGES)
    n_translated = n - default[ENGLISH]
    assert min(default[c] for c in TARGET_LANGUAGES) >= int(0.5 * n_translated / 95)
    assert sum(default.values()) == n


def test_counts_follow_proportions_exactly():
    counts = plan_language_counts(100_000, ["de", "fr", "sw"], rule="mc4", language_floor=0, english_share=0.4)
    assert counts[ENGLISH] == 40_000
    p = language_weights(["de", "fr", "sw"], "mc4")
    for code, share in zip(["de", "fr", "sw"], p):
        assert abs(counts[code] - 60_000 * share) <= 1


@pytest.mark.parametrize("min_examples", [7, 20])
def test_min_examples_floor_holds_exactly(min_examples):
    counts = plan_language_counts(
        1000, TARGET_LANGUAGES[:40], rule="mc4", language_floor=0, min_examples=min_examples, english_share=0.1
    )
    assert min(counts[c] for c in TARGET_LANGUAGES[:40]) >= min_examples
    assert sum(counts.values()) == 1000


def test_impossible_floor_is_a_clear_error():
    with pytest.raises(ValueError, match=r"min_examples_per_language=1000 needs 95 languages x 1000 = 95000"):
        plan_language_counts(5000, TARGET_LANGUAGES, min_examples=1000, context="task 'caption'")


def test_allocate_counts_sums_and_respects_min_count():
    p = np.array([0.9, 0.05, 0.03, 0.02])
    counts = allocate_counts(101, p, min_count=5)
    assert counts.sum() == 101 and counts.min() >= 5


def test_english_share_one_is_english_only():
    counts = plan_language_counts(1234, TARGET_LANGUAGES, english_share=1.0, min_examples=50)
    assert counts[ENGLISH] == 1234 and sum(counts.values()) == 1234
    assert set(assign_languages(counts, seed=0)) == {ENGLISH}


def test_default_english_share_is_the_papers_mc4_share():
    assert plan_language_counts(10_000, ["de"])[ENGLISH] == round(10_000 * 0.4384274322288712)


def test_assignment_is_deterministic_given_the_seed():
    counts = plan_language_counts(500, ["de", "fr", "zh", "sw"], english_share=0.2)
    a, b = assign_languages(counts, seed=3, salt="caption"), assign_languages(counts, seed=3, salt="caption")
    assert a == b
    assert {c: a.count(c) for c in counts} == counts
    assert assign_languages(counts, seed=4, salt="caption") != a
    assert assign_languages(counts, seed=3, salt="vqa") != a


# ---- language identification --------------------------------------------------------------------------------------


def test_detect_language_tells_german_from_english():
    assert detect_language(
        [
            "Ein Hund läuft am Strand entlang und spielt mit einem Ball.",
            "A dog runs along the beach and plays with a ball.",
            " ",
        ]
    ) == ["de", "en", "und"]
    assert detect_language("一只狗在海滩上奔跑，和一个球玩耍。") == ["zh"]


def test_language_check_statuses():
    assert language_check("Ein Hund läuft am Strand entlang.", "de") == LANGID_MATCH
    assert language_check("A dog runs along the beach.", "de") == LANGID_MISMATCH
    assert language_check("Ja", "de") == LANGID_SHORT
    # Every table language has a verdict now (fastText's lid.176 covers Cebuano): German is not Cebuano.
    assert language_check("Ein Hund läuft am Strand entlang.", "ceb") == LANGID_MISMATCH
    # Malay and Indonesian are one language to the identifier: accepted both ways.
    assert language_check("Gambar ini menunjukkan seekor anjing di pantai.", "ms") == LANGID_MATCH
    assert language_check("Ang larawan ay nagpapakita ng aso sa dalampasigan.", "fil") == LANGID_MATCH


# Real human-written text (tests/data/README.md): IGLUE's annotation files, the Leipzig corpora sentences of lingua's
# test data and UDHR translations, 36 texts per language. The targets: recall >= 99.5% overall and >= 97% for
# every language, false accepts <= 0.5%.
# Yoruba misses 97% by one text: its Leipzig sentences include Wikipedia stubs written without tone marks and made
# of foreign names ("Leslie Manigat je Aare orile-ede Haiti tele."), two of which are read as Croatian and Spanish
# (eval/README.md, "Language identification").
KNOWN_SHORTFALLS = {"yo": 34 / 36}


@pytest.fixture(scope="module")
def real_text_rows():
    return read_texts(REAL_TEXT)


@pytest.fixture(scope="module")
def real_text_result(real_text_rows):
    return evaluate_identification(real_text_rows)


def test_real_text_file_covers_every_identifiable_language(real_text_rows):
    per_language = {}
    for row in real_text_rows:
        assert row["text"].strip() and row["source"], row
        per_language[row["lang"]] = per_language.get(row["lang"], 0) + 1
    assert set(per_language) == set(IDENTIFIABLE_LANGUAGES)  # the table's 96 languages, plus hr and quz
    assert min(per_language.values()) >= 36
    # Filter-sized texts: language_check reports shorter ones as unchecked.
    assert min(text_weight(row["text"]) for row in real_text_rows) >= 20


def test_identification_meets_its_targets_on_real_text(real_text_result):
    result = real_text_result
    assert result["identifier"] == LANGID_IDENTIFIER
    assert result["recall"] >= 0.995, result["recall"]
    assert result["false_accepts"] <= 0.005, result["false_accepts"]
    below = {
        lang: entry["recall"]
        for lang, entry in result["languages"].items()
        if entry["recall"] < KNOWN_SHORTFALLS.get(lang, 0.97) - 1e-9
    }
    assert not below, below
    # A shortfall that is fixed should leave the list.
    assert all(result["languages"][lang]["recall"] < 0.97 for lang in KNOWN_SHORTFALLS)


def test_every_language_of_the_table_gets_a_verdict(real_text_rows):
    first = {}
    for row in real_text_rows:
        first.setdefault(row["lang"], row["text"])
    for language in LANGUAGES:
        assert language_check(first[language.code], language.code) == LANGID_MATCH, language.code
        # ... and another language's text is rejected, not left unchecked.
        other = first["de" if language.code != "de" else "fr"]
        assert language_check(other, language.code) == LANGID_MISMATCH, language.code
    assert all(language_check(first["de"], code) != LANGID_UNSUPPORTED for code in TARGET_LANGUAGES)


def test_readme_model_card_lists_every_language_of_the_table():
    # The README is also the model card: its YAML metadata must name the languages the toolkit trains.
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    _, front_matter, _ = text.split("---\n", 2)
    metadata = yaml.safe_load(front_matter)
    assert metadata["language"] == [ENGLISH, *TARGET_LANGUAGES]
    assert metadata["pipeline_tag"] == "image-text-to-text" and metadata["library_name"] == "transformers"
