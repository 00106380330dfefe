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

Language identification is py3langid (a maintained fork of langid.py that ships its model, so nothing is downloaded
at run time). ``detect_language`` is shared with the evaluation suite's language-fidelity metric.
"""

from __future__ import annotations

import logging
import math
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

LANGID_MATCH = "verified"
LANGID_MISMATCH = "wrong_language"
LANGID_UNSUPPORTED = "unchecked_unsupported"
LANGID_SHORT = "unchecked_short"

_IDENTIFIER = None


def _identifier():
    """py3langid restricted to the table's languages: labels of languages we never produce only add confusions."""
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=False)
        labels = {language.langid for language in LANGUAGES if language.langid}
        labels |= {label for language in LANGUAGES for label in language.accept}
        identifier.set_languages(sorted(labels & set(identifier.labels)))
        _IDENTIFIER = identifier
    return _IDENTIFIER


def detect_language(texts: Iterable[str] | str) -> list[str]:
    """py3langid labels (ISO 639-1 where one exists) of ``texts``, one per text; ``"und"`` for blank text.

    Labels follow py3langid, not this table: Filipino is ``tl``. Map a table language to its label with
    ``LANGUAGE_BY_CODE[code].langid``, or use ``language_check``.
    """
    if isinstance(texts, str):
        texts = [texts]
    identifier = _identifier()
    return [identifier.classify(text)[0] if text and text.strip() else "und" for text in texts]


def text_weight(text: str) -> int:
    """Letters in ``text``, wide (CJK) characters counted twice: one of them carries about a word."""
    weight = 0
    for char in text:
        if char.isalpha():
            weight += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return weight


def language_check(text: str, code: str, min_chars: int = 20) -> str:
    """Whether ``text`` is in language ``code``: verified, wrong_language, or unchecked (unsupported / too short).

    Identification on a few words is a guess, so texts with fewer than ``min_chars`` letters are reported as
    unchecked rather than passed or failed.
    """
    language = get_language(code)
    if language.langid is None:
        return LANGID_UNSUPPORTED
    if text_weight(text) < min_chars:
        return LANGID_SHORT
    detected = detect_language([text])[0]
    return LANGID_MATCH if detected in (language.langid, *language.accept) else LANGID_MISMATCH
