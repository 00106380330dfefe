"""Task fine-tuning data (mblip/data/finetune.py): each reader on tiny files in the datasets' released formats.

The annotation lines below are copied from the releases (GQA balanced questions as IGLUE ships testdev; LXMERT's
train.json format as IGLUE ships testdev.json; SNLI's first train pairs as SNLI-VE writes them, with `Flikr30kID`;
IGLUE's XVNLI train lines; NLVR2's data/*.json lines; IGLUE's flickr30k annotation lines). NLVR2's train.json is
not in its repository (it is downloaded separately); its lines have the dev/test fields plus `directory`, as its
README documents, and the train line here is built that way.
"""

import json
import logging
import os
import random
import sys

import datasets
import pytest
from PIL import Image

from mblip.data import finetune
from mblip.data.finetune import CAPTION_PROMPTS, convert, iter_rows, main, report_path


# GQA train_balanced_questions.json: {qid: {...}}; two real testdev entries (semantic programs shortened to one step).
GQA_QUESTIONS = {
    "201307270": {
        "semantic": [{"operation": "select", "dependencies": [], "argument": "snowboard (1)"}],
        "entailed": [],
        "equivalent": ["201307270"],
        "question": "Is there either a fence or a snowboard in the photograph?",
        "imageId": "n161313",
        "isBalanced": True,
        "groups": {"global": None, "local": "09existOr-fence_snowboard"},
        "answer": "yes",
        "semanticStr": "select: snowboard (1)->exist: ? [0]->select: fence (-) ->exist: ? [2]->or:  [1, 3]",
        "annotations": {"answer": {}, "question": {"7": "1"}, "fullAnswer": {"4": "1"}},
        "types": {"detailed": "existOr", "semantic": "obj", "structural": "logical"},
        "fullAnswer": "Yes, there is a snowboard.",
    },
    "201307334": {
        "semantic": [{"operation": "select", "dependencies": [], "argument": "person (0)"}],
        "entailed": ["201307341", "201307340"],
        "equivalent": ["201307334"],
        "question": "What is the person doing?",
        "imageId": "n161313",
        "isBalanced": True,
        "groups": {"global": "pose", "local": "10q-person_pose"},
        "answer": "jumping",
        "semanticStr": "select: person (0)->query: pose [0]",
        "annotations": {"answer": {}, "question": {}, "fullAnswer": {"1": "0"}},
        "types": {"detailed": "activity", "semantic": "attr", "structural": "query"},
        "fullAnswer": "The person is jumping.",
    },
    "2062389": {
        "semantic": [{"operation": "select", "dependencies": [], "argument": "water (4)"}],
        "entailed": ["2062386"],
        "equivalent": ["2062389"],
        "question": "How is the water in the image?",
        "imageId": "n179136",
        "isBalanced": True,
        "groups": {"global": "state", "local": "10q-water_state"},
        "answer": "choppy",
        "semanticStr": "select: water (4)->query: state [0]",
        "annotations": {"answer": {}, "question": {"3": "4"}, "fullAnswer": {"1": "4"}},
        "types": {"detailed": "state", "semantic": "attr", "structural": "query"},
        "fullAnswer": "The water is choppy.",
    },
}

# LXMERT's format (IGLUE datasets/gqa/annotations/train.json, the file the official script read), indented as IGLUE's.
LXMERT_GQA = [
    {"img_id": "n161313", "label": {"no": 1.0}, "question_id": "201307251", "sent": "Is it overcast?"},
    {"img_id": "n235859", "label": {"women": 1.0}, "question_id": "201640614", "sent": "Who is wearing the dress?"},
]

# SNLI-VE snli_ve_train.jsonl: SNLI's lines with the keys sorted and Flikr30kID added (with .jpg).
SNLI_VE_LINES = [
    {
        "Flikr30kID": "3416050480.jpg",
        "annotator_labels": ["neutral"],
        "captionID": "3416050480.jpg#4",
        "gold_label": "neutral",
        "pairID": "3416050480.jpg#4r1n",
        "sentence1": "A person on a horse jumps over a broken down airplane.",
        "sentence1_binary_parse": "( ( ( A person ) ( on ( a horse ) ) ) ( ( jumps ( over ( a ( broken ( down airplane ) ) ) ) ) . ) )",
        "sentence1_parse": "(ROOT (S (NP (NP (DT A) (NN person)) (PP (IN on) (NP (DT a) (NN horse)))) (VP (VBZ jumps) (PP (IN over) (NP (DT a) (JJ broken) (JJ down) (NN airplane)))) (. .)))",
        "sentence2": "A person is training his horse for a competition.",
        "sentence2_binary_parse": "( ( A person ) ( ( is ( ( training ( his horse ) ) ( for ( a competition ) ) ) ) . ) )",
        "sentence2_parse": "(ROOT (S (NP (DT A) (NN person)) (VP (VBZ is) (VP (VBG training) (NP (PRP$ his) (NN horse)) (PP (IN for) (NP (DT a) (NN competition))))) (. .)))",
    },
    {
        "Flikr30kID": "3416050480.jpg",
        "annotator_labels": ["contradiction"],
        "captionID": "3416050480.jpg#4",
        "gold_label": "contradiction",
        "pairID": "3416050480.jpg#4r1c",
        "sentence1": "A person on a horse jumps over a broken down airplane.",
        "sentence2": "A person is at a diner, ordering an omelette.",
    },
    {
        "Flikr30kID": "3416050480.jpg",
        "annotator_labels": ["entailment"],
        "captionID": "3416050480.jpg#4",
        "gold_label": "entailment",
        "pairID": "3416050480.jpg#4r1e",
        "sentence1": "A person on a horse jumps over a broken down airplane.",
        "sentence2": "A person is outdoors, on a horse.",
    },
]
# IGLUE datasets/XVNLI/annotations/en/train_1.jsonl: Flikr30kID without its extension.
IGLUE_XVNLI_LINE = {
    "gold_label": "contradiction",
    "sentence1": "The flight attendant dressed in yellow demonstrates life vest usage.",
    "sentence2": "A woman is preparing drinks on an airplane.",
    "captionID": "2487069642.jpg#1",
    "pairID": "2487069642.jpg#1r1c",
    "Flikr30kID": "2487069642",
}

# NLVR2 nlvr2/data/dev.json lines; the train split's lines carry `directory` too.
NLVR2_DEV = {
    "validation": {"61": "False"},
    "sentence": "The right image shows a curving walkway of dark glass circles embedded in dirt and flanked by foliage.",
    "left_url": "https://i.kinja-img.com/gawker-media/image/upload/s--UyhVSznS--/18iy0hwo5wdrpjpg.jpg",
    "writer": "61",
    "label": "False",
    "right_url": "https://cdn.pixabay.com/photo/2015/09/21/12/57/beer-bottles-949793_960_720.jpg",
    "synset": "beer bottle",
    "query": "some beer bottles38",
    "identifier": "dev-850-0-0",
    "extra_validations": {"154": "False", "139": "False", "149": "False", "62": "False"},
}
NLVR2_TRAIN = {
    "validation": {"77": "True"},
    "sentence": "All the bottles are from the same brand.",
    "left_url": "https://i.pinimg.com/originals/09/f2/21/09f2219f0a4458931939d95b1d9ba1fa.jpg",
    "writer": "103",
    "label": "True",
    "right_url": "https://s-media-cache-ak0.pinimg.com/originals/93/9b/37/939b37b923454a4b2302a9069b0b4dae.jpg",
    "synset": "beer bottle",
    "query": "some beer bottles2",
    "identifier": "train-10171-0-0",
    "extra_validations": {},
    "directory": 51,
}

# IGLUE datasets/flickr30k/annotations/*_ann.jsonl lines.
FLICKR_LINES = [
    {
        "sentences": [
            "A group of people stand in the back of a truck filled with cotton.",
            "Men are standing on and about a truck carrying a white substance.",
            "A group of people are standing on a pile of wool in a truck.",
            "A group of men are loading cotton onto a truck",
            "Workers load sheared wool onto a truck.",
        ],
        "id": "1018148011",
        "img_path": "1018148011.jpg",
    },
    {
        "sentences": [
            "An adult wearing a gray shirt with red sleeves sleeping on a couch.",
            "A woman in black pants napping on the couch.",
            "A man sleeping in a green room on a couch.",
            "The young woman is sleeping in her room.",
            "A long-haired man sleeping on a couch",
        ],
        "id": "1029450589",
        "img_path": "1029450589.jpg",
    },
]

# data/flickr/generate_flickr.py `templates_en`, verbatim (its trailing space included).
OFFICIAL_CAPTION_TEMPLATES = [
    "Caption the image.",
    "Short image caption: ",
    "Briefly describe the image.",
    "Write a short image description.",
    "Summarize the image.",
]


def make_image(path, suffix=".jpg"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path, format="PNG" if suffix == ".png" else "JPEG")


def write_jsonl(path, rows, extra_lines=()):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row) for row in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_output(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_caption_prompts_are_the_official_templates():
    assert list(CAPTION_PROMPTS) == [t.strip() for t in OFFICIAL_CAPTION_TEMPLATES]


# ------------------------------------------------------------------------------------------------ GQA
def test_gqa_balanced_questions(tmp_path):
    source = tmp_path / "questions1.2" / "train_balanced_questions.json"
    source.parent.mkdir()
    source.write_text(json.dumps(GQA_QUESTIONS), encoding="utf-8")
    for image in ("n161313", "n179136"):
        make_image(tmp_path / "images" / f"{image}.jpg")

    # The folder is enough: the reader finds GQA's own layout.
    report = convert("gqa", tmp_path, tmp_path / "images", tmp_path / "out" / "gqa_train.jsonl", progress=False)
    rows = read_output(tmp_path / "out" / "gqa_train.jsonl")
    assert rows[0] == {
        "image_id": "n161313.jpg",
        "context": "Question: Is there either a fence or a snowboard in the photograph? Short answer in English:",
        "label": "yes",
        "lang": "en",
        "task": "gqa",
        "id": "201307270",
    }
    assert [r["label"] for r in rows] == ["yes", "jumping", "choppy"]
    assert report["rows_read"] == report["rows_written"] == 3 and report["bad_rows"]["count"] == 0
    assert report["images_found"] == 2 and report["distinct_answers"] == 3


def test_gqa_lxmert_format_the_official_script_read(tmp_path):
    source = tmp_path / "datasets" / "gqa" / "annotations" / "train.json"
    source.parent.mkdir(parents=True)
    source.write_text(json.dumps(LXMERT_GQA, indent=4), encoding="utf-8")
    make_image(tmp_path / "images" / "n161313.jpg")  # n235859 is missing

    out = tmp_path / "gqa.jsonl"
    report = convert("gqa", tmp_path, tmp_path / "images", out, max_bad_rows=0.5, progress=False)
    assert read_output(out) == [
        {
            "image_id": "n161313.jpg",
            "context": "Question: Is it overcast? Short answer in English:",
            "label": "no",
            "lang": "en",
            "task": "gqa",
            "id": "201307251",
        }
    ]
    assert report["bad_rows"]["by_reason"] == {"missing_image_file": 1}
    assert report["bad_rows"]["examples"][0]["row"] == "train.json:[1]"


def test_gqa_bad_entries_counted_by_reason(tmp_path):
    questions = dict(GQA_QUESTIONS)
    questions["1"] = {**GQA_QUESTIONS["2062389"], "question": "  "}
    questions["2"] = {**GQA_QUESTIONS["2062389"], "answer": 7}  # wrong type
    questions["3"] = {k: v for k, v in GQA_QUESTIONS["2062389"].items() if k != "imageId"}
    source = tmp_path / "train_balanced_questions.json"
    source.write_text(json.dumps(questions), encoding="utf-8")
    make_image(tmp_path / "images" / "n161313.jpg")

    report = convert("gqa", source, tmp_path / "images", tmp_path / "o.jsonl", max_bad_rows=1.0, progress=False)
    assert report["rows_read"] == 6 and report["rows_written"] == 2
    assert report["bad_rows"]["by_reason"] == {"missing_image_file": 1, "empty_text": 1, "malformed_line": 2}
    where = {e["row"]: e["reason"] for e in report["bad_rows"]["examples"]}
    assert where["train_balanced_questions.json:3"] == "malformed_line"
    assert "missing field 'imageId'" in next(
        e["excerpt"] for e in report["bad_rows"]["examples"] if e["row"].endswith(":3")
    )


def test_gqa_document_is_streamed_not_loaded(tmp_path, monkeypatch):
    source = tmp_path / "train_balanced_questions.json"
    source.write_text(json.dumps(GQA_QUESTIONS), encoding="utf-8")
    make_image(tmp_path / "n161313.jpg")
    make_image(tmp_path / "n179136.jpg")

    def no_load(*args, **kwargs):
        raise AssertionError("json.load would hold the 1.2 GB document in memory")

    monkeypatch.setattr(finetune.json, "load", no_load)
    rows, reading = iter_rows("gqa", source, tmp_path)
    first = next(rows)  # lazily: the first row comes before the document is read to its end
    assert first["id"] == "201307270" and reading.rows_read == 1
    assert len(list(rows)) == 2


def test_gqa_without_ijson_falls_back_with_a_warning(tmp_path, monkeypatch, caplog):
    source = tmp_path / "train_balanced_questions.json"
    source.write_text(json.dumps(GQA_QUESTIONS), encoding="utf-8")
    make_image(tmp_path / "n161313.jpg")
    make_image(tmp_path / "n179136.jpg")
    monkeypatch.setitem(sys.modules, "ijson", None)  # import ijson raises ImportError
    with caplog.at_level(logging.WARNING, logger="mblip.data.finetune"):
        rows, _ = iter_rows("gqa", source, tmp_path)
        assert [r["label"] for r in rows] == ["yes", "jumping", "choppy"]
    assert "ijson is not installed" in caplog.text and "in memory" in caplog.text


def test_gqa_broken_document_fails_clearly(tmp_path):
    source = tmp_path / "train_balanced_questions.json"
    text = json.dumps(GQA_QUESTIONS)
    source.write_text(text[: len(text) // 2], encoding="utf-8")  # a truncated download
    make_image(tmp_path / "n161313.jpg")
    with pytest.raises(ValueError, match="is not valid JSON"):
        convert("gqa", source, tmp_path, tmp_path / "o.jsonl", max_bad_rows=1.0, progress=False)
    assert not (tmp_path / "o.jsonl").exists()


def test_each_distinct_image_is_looked_up_once(tmp_path, monkeypatch):
    source = tmp_path / "train_balanced_questions.json"
    source.write_text(json.dumps(GQA_QUESTIONS), encoding="utf-8")
    make_image(tmp_path / "n161313.jpg")
    make_image(tmp_path / "n179136.jpg")
    looked_up = []
    isfile = os.path.isfile
    monkeypatch.setattr(finetune.os.path, "isfile", lambda p: looked_up.append(str(p)) or isfile(p))
    rows, _ = iter_rows("gqa", source, tmp_path)
    assert len(list(rows)) == 3
    assert sorted(os.path.basename(p) for p in looked_up) == ["n161313.jpg", "n179136.jpg"]


# ------------------------------------------------------------------------------------------------ SNLI-VE
def test_snli_ve_rows_labels_and_bad_lines(tmp_path):
    source = write_jsonl(
        tmp_path / "snli_ve_train.jsonl",
        [*SNLI_VE_LINES, IGLUE_XVNLI_LINE, {**SNLI_VE_LINES[0], "gold_label": "-", "pairID": "x#1"}],
        extra_lines=[
            '{"Flikr30kID": "3416050480.jpg", "gold_label": "neutral", "sentence2": "broken',
            json.dumps({**SNLI_VE_LINES[1], "sentence2": " "}),
            json.dumps({**SNLI_VE_LINES[1], "Flikr30kID": "999.jpg"}),
        ],
    )
    images = tmp_path / "flickr30k-images"
    make_image(images / "3416050480.jpg")
    make_image(images / "2487069642.jpg")

    report = convert("snli_ve", source, images, tmp_path / "xvnli_train.jsonl", max_bad_rows=0.6, progress=False)
    rows = read_output(tmp_path / "xvnli_train.jsonl")
    assert rows[0] == {
        "image_id": "3416050480.jpg",
        "context": 'Is it guaranteed true that "A person is training his horse for a competition."? Yes, no, or '
        "maybe? Answer in English:",
        "label": "maybe",
        "lang": "en",
        "task": "snli_ve",
        "id": "3416050480.jpg#4r1n",
    }
    assert [r["label"] for r in rows] == ["maybe", "no", "yes", "no"]
    assert rows[3]["image_id"] == "2487069642.jpg"  # IGLUE's id without extension
    assert report["label_counts"] == {"no": 2, "maybe": 1, "yes": 1}
    assert report["rows_read"] == 8
    assert report["bad_rows"]["by_reason"] == {
        "unknown_label": 1,
        "malformed_line": 1,
        "empty_text": 1,
        "missing_image_file": 1,
    }
    where = {e["reason"]: e["row"] for e in report["bad_rows"]["examples"]}
    assert where["malformed_line"] == "snli_ve_train.jsonl:6"
    assert where["unknown_label"] == "snli_ve_train.jsonl:5"
    assert where["missing_image_file"] == "snli_ve_train.jsonl:8"


def test_snli_ve_finds_iglue_layout(tmp_path):
    source = write_jsonl(
        tmp_path / "iglue" / "datasets" / "XVNLI" / "annotations" / "en" / "train.jsonl", [IGLUE_XVNLI_LINE]
    )
    make_image(tmp_path / "images" / "2487069642.jpg")
    rows, reading = iter_rows("snli_ve", tmp_path / "iglue", tmp_path / "images")
    assert [r["label"] for r in rows] == ["no"] and reading.path == source


# ------------------------------------------------------------------------------------------------ NLVR2
def test_nlvr2_two_images_and_yes_no(tmp_path):
    images = tmp_path / "images"
    for name in ("train-10171-0-img0.png", "train-10171-0-img1.png"):
        make_image(images / "train" / "51" / name, ".png")
    make_image(images / "dev-850-0-img0.png", ".png")
    make_image(images / "dev-850-0-img1.png", ".png")
    dev_as_train = {**NLVR2_DEV, "identifier": "dev-850-0-1", "label": "True"}
    source = write_jsonl(
        tmp_path / "nlvr2" / "data" / "train.json",
        [
            NLVR2_TRAIN,
            dev_as_train,
            {**NLVR2_TRAIN, "identifier": "train-10171-1-0"},  # its images are missing
            {**NLVR2_TRAIN, "label": "maybe"},
            {**NLVR2_TRAIN, "sentence": ""},
            {k: v for k, v in NLVR2_TRAIN.items() if k != "label"},
        ],
    )

    report = convert(
        "nlvr2", tmp_path / "nlvr2", images, tmp_path / "marvl_train.jsonl", max_bad_rows=1.0, progress=False
    )
    rows = read_output(tmp_path / "marvl_train.jsonl")
    assert rows[0] == {
        "image_id": ["train/51/train-10171-0-img0.png", "train/51/train-10171-0-img1.png"],
        "context": 'Based on the two images, is it correct to say "All the bottles are from the same brand."? Yes or no?',
        "label": "yes",
        "lang": "en",
        "task": "nlvr2",
        "id": "train-10171-0-0",
    }
    assert rows[1]["image_id"] == ["dev-850-0-img0.png", "dev-850-0-img1.png"]
    assert report["bad_rows"]["by_reason"] == {
        "missing_image_file": 1,
        "unknown_label": 1,
        "empty_text": 1,
        "malformed_line": 1,
    }
    assert report["label_counts"] == {"yes": 2}

    # --image_root the train folder itself, as the official config did: paths become <directory>/<file>.
    rows, _ = iter_rows("nlvr2", source, images / "train")
    assert next(rows)["image_id"] == ["51/train-10171-0-img0.png", "51/train-10171-0-img1.png"]


def test_nlvr2_label_false_and_boolean(tmp_path):
    for side in (0, 1):
        make_image(tmp_path / "51" / f"train-10171-0-img{side}.png", ".png")
    source = write_jsonl(tmp_path / "train.json", [{**NLVR2_TRAIN, "label": "False"}, {**NLVR2_TRAIN, "label": True}])
    rows, _ = iter_rows("nlvr2", source, tmp_path)
    assert [r["label"] for r in rows] == ["no", "yes"]


# ------------------------------------------------------------------------------------------------ Flickr30k
def test_flickr30k_iglue_one_row_per_caption_with_official_templates(tmp_path):
    images = tmp_path / "flickr30k-images"
    make_image(images / "1018148011.jpg")
    make_image(images / "1029450589.jpg")
    source = write_jsonl(tmp_path / "flickr30k" / "annotations" / "train_ann.jsonl", FLICKR_LINES)

    report = convert("flickr30k", tmp_path, images, tmp_path / "flickr_train.jsonl", progress=False)
    rows = read_output(tmp_path / "flickr_train.jsonl")
    assert len(rows) == 10 and report["rows_read"] == 10
    assert rows[0]["image_id"] == "1018148011.jpg" and rows[0]["label"] == FLICKR_LINES[0]["sentences"][0]
    assert rows[0]["id"] == "1018148011.jpg#0" and rows[0]["task"] == "flickr30k"

    # The official assignment: random.seed(42), one random.choice(templates_en) per caption, in file order.
    random.seed(42)
    official = [random.choice(OFFICIAL_CAPTION_TEMPLATES).strip() for _ in range(10)]
    assert [r["context"] for r in rows] == official
    assert source.exists()


def test_flickr30k_bad_rows(tmp_path):
    images = tmp_path / "images"
    make_image(images / "1018148011.jpg")
    captions = FLICKR_LINES[0]["sentences"]
    lines = [
        FLICKR_LINES[1],  # its image is missing: five rows lost
        {**FLICKR_LINES[0], "sentences": [captions[0], "", *captions[2:]]},  # one blank caption
        {"id": "1", "img_path": "1.jpg", "sentences": "not a list"},
    ]
    source = write_jsonl(tmp_path / "train_ann.jsonl", lines)
    report = convert("flickr30k", source, images, tmp_path / "o.jsonl", max_bad_rows=1.0, progress=False)
    assert report["rows_written"] == 4 and report["rows_read"] == 11
    assert report["bad_rows"]["by_reason"] == {"missing_image_file": 5, "empty_text": 1, "malformed_line": 1}
    examples = {e["reason"]: e for e in report["bad_rows"]["examples"]}
    assert examples["missing_image_file"]["row"] == "train_ann.jsonl:1"
    assert examples["empty_text"]["row"] == "train_ann.jsonl:2#1"
    assert examples["malformed_line"]["row"] == "train_ann.jsonl:3"
    # Skipped captions still take their template draws, so the good rows keep the official assignment
    # (draws 5, 7, 8 and 9 of the file).
    random.seed(42)
    official = [random.choice(OFFICIAL_CAPTION_TEMPLATES).strip() for _ in range(10)]
    rows = read_output(tmp_path / "o.jsonl")
    assert [r["context"] for r in rows] == [official[i] for i in (5, 7, 8, 9)]
    assert [r["id"] for r in rows] == [f"1018148011.jpg#{i}" for i in (0, 2, 3, 4)]


def test_flickr30k_karpathy_train_split(tmp_path):
    karpathy = {
        "images": [
            {
                "sentids": [0, 1],
                "imgid": 0,
                "sentences": [
                    {
                        "tokens": ["two", "young", "guys"],
                        "raw": "Two young guys with shaggy hair look at their hands while hanging out in the yard.",
                        "imgid": 0,
                        "sentid": 0,
                    },
                    {
                        "tokens": ["two", "young"],
                        "raw": "Two young, White males are outside near many bushes.",
                        "imgid": 0,
                        "sentid": 1,
                    },
                ],
                "split": "train",
                "filename": "1000092795.jpg",
            },
            {
                "sentids": [2],
                "imgid": 1,
                "sentences": [{"tokens": ["a"], "raw": "A child in a pink dress.", "imgid": 1, "sentid": 2}],
                "split": "test",
                "filename": "1000268201.jpg",
            },
        ],
        "dataset": "flickr30k",
    }
    source = tmp_path / "dataset_flickr30k.json"
    source.write_text(json.dumps(karpathy), encoding="utf-8")
    make_image(tmp_path / "imgs" / "1000092795.jpg")
    report = convert("flickr30k", tmp_path, tmp_path / "imgs", tmp_path / "o.jsonl", progress=False)
    rows = read_output(tmp_path / "o.jsonl")
    assert [r["label"] for r in rows] == [
        "Two young guys with shaggy hair look at their hands while hanging out in the yard.",
        "Two young, White males are outside near many bushes.",
    ]
    assert report["skipped"] == {"split test": 1} and report["bad_rows"]["count"] == 0


# ------------------------------------------------------------------------------------------------ threshold, CLI
def test_max_bad_rows_fails_the_run_and_writes_no_output(tmp_path, caplog):
    source = write_jsonl(tmp_path / "snli_ve_train.jsonl", SNLI_VE_LINES)  # no image exists
    out = tmp_path / "xvnli_train.jsonl"
    args = ["--task", "snli_ve", "--input", str(source), "--image_root", str(tmp_path), "--output", str(out)]
    with caplog.at_level(logging.ERROR):
        assert main([*args, "--max_bad_rows", "0.5", "--progress", "false"]) == 2
    assert "3 of 3 input rows (100.0%) are malformed, more than --max_bad_rows=0.5" in caplog.text
    assert "missing_image_file: 3" in caplog.text
    assert not out.exists()
    report = json.loads(report_path(out).read_text())
    assert report["failed"] is True and report["bad_rows"]["by_reason"] == {"missing_image_file": 3}

    # Under the threshold the run succeeds; at exactly the threshold, too.
    make_image(tmp_path / "3416050480.jpg")
    lines = [*SNLI_VE_LINES, {**SNLI_VE_LINES[0], "Flikr30kID": "1.jpg"}]
    write_jsonl(source, lines)
    assert main([*args, "--max_bad_rows", "0.25", "--progress", "false"]) == 0
    assert len(read_output(out)) == 3
    assert main([*args, "--max_bad_rows", "0.2", "--progress", "false"]) == 2


def test_cli_rejects_bad_options(tmp_path):
    base = ["--input", str(tmp_path), "--image_root", str(tmp_path), "--output", str(tmp_path / "o.jsonl")]
    assert main(["--task", "vqa", *base]) == 2
    assert main(["--task", "gqa", *base, "--max_bad_rows", "2"]) == 2
    assert main(["--task", "gqa", *base[:-1], str(tmp_path / "o.csv")]) == 2
    assert main(["--task", "gqa", *base]) == 2  # no GQA file in the folder


@pytest.mark.parametrize("task", ["gqa", "snli_ve", "nlvr2", "flickr30k"])
def test_output_loads_with_datasets(tmp_path, task):
    images = tmp_path / "images"
    if task == "gqa":
        source = tmp_path / "train_balanced_questions.json"
        source.write_text(json.dumps(GQA_QUESTIONS), encoding="utf-8")
        make_image(images / "n161313.jpg")
        make_image(images / "n179136.jpg")
    elif task == "snli_ve":
        source = write_jsonl(tmp_path / "snli_ve_train.jsonl", SNLI_VE_LINES)
        make_image(images / "3416050480.jpg")
    elif task == "nlvr2":
        source = write_jsonl(tmp_path / "train.json", [NLVR2_TRAIN, {**NLVR2_TRAIN, "label": "False"}])
        for side in (0, 1):
            make_image(images / "train" / "51" / f"train-10171-0-img{side}.png", ".png")
    else:
        source = write_jsonl(tmp_path / "train_ann.jsonl", FLICKR_LINES)
        make_image(images / "1018148011.jpg")
        make_image(images / "1029450589.jpg")
    out = tmp_path / "out" / f"{task}_train.jsonl"
    args = ["--task", task, "--input", str(source), "--image_root", str(images), "--output", str(out)]
    assert main([*args, "--progress", "false"]) == 0

    loaded = datasets.load_dataset("json", data_files=str(out), split="train")
    assert set(loaded.column_names) == {"image_id", "context", "label", "lang", "task", "id"}
    assert len(loaded) == len(read_output(out)) > 0
    assert set(loaded["lang"]) == {"en"} and set(loaded["task"]) == {task}
    for value in loaded["image_id"]:
        paths = value if isinstance(value, list) else [value]
        assert len(paths) == (2 if task == "nlvr2" else 1)
        assert all((images / p).is_file() for p in paths)

    # train_mblip.py's own data check accepts every row: columns, image paths and targets are what it reads.
    from mblip.training import DataArguments, drop_bad_rows

    kept, checked = drop_bad_rows(loaded, DataArguments(train_file=str(out), image_root=str(images)), "train")
    assert checked["bad_rows"] == 0 and len(kept) == len(loaded)
