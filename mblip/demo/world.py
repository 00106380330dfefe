"""The demo's synthetic world: rendered scenes of coloured shapes, described and questioned in eight languages.

A scene holds one to three shapes (circle, square, triangle) in four colours, each in its own slot (top, left, right,
bottom). Everything is a pure function of the seed: the same seed gives the same scenes, pixels and sentences.

Texts are written here, per language, from hand-made vocabularies and sentence templates (not machine-translated):
English, German, Portuguese and Indonesian (Latin script), Russian (Cyrillic), Chinese (Han), Korean (Hangul) and
Bengali (Bengali script). These are exactly xGQA's eight languages, all of which XM3600 covers too, so the held-out
scenes are written in those two benchmarks' released formats and `eval/` scores them unchanged:
- captions in the target language (XM3600, CIDEr);
- questions in the target language with English answers (xGQA, accuracy): the cross-lingual transfer setting.
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from mblip.outputs import atomic_open, write_jsonl


LANGUAGES = ("en", "de", "pt", "id", "ru", "zh", "ko", "bn")
SCRIPTS = {
    "en": "Latin",
    "de": "Latin",
    "pt": "Latin",
    "id": "Latin",
    "ru": "Cyrillic",
    "zh": "Han",
    "ko": "Hangul",
    "bn": "Bengali",
}

COLOURS = {"red": (215, 48, 39), "green": (46, 160, 67), "blue": (44, 90, 220), "yellow": (240, 190, 20)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top", "left", "right", "bottom")  # also the order in which captions list the shapes
# Counts are answered in digits: the VQA answer normalisation (eval/metrics) turns number words into digits.
NUMBERS = {1: "1", 2: "2", 3: "3"}
QUESTION_KINDS = ("count", "colour", "shape", "exists", "where")

IMAGE_SIZE = 48
BACKGROUND = (246, 244, 238)
# Slot centres as fractions of the image side: the edge cells of a 3 x 3 grid, a diamond, so that "left", "top", ...
# are unambiguous. With the demo ViT's 16 px patches on 48 px images each slot is one patch.
SLOT_CENTRES = {"top": (0.5, 1 / 6), "left": (1 / 6, 0.5), "right": (5 / 6, 0.5), "bottom": (0.5, 5 / 6)}


# ================================================================================================ scenes
@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str
    position: str
    # Rendering jitter, drawn with the scene so that rendering is a pure function of it: offsets and half-size in px.
    dx: int = 0
    dy: int = 0
    radius: int = 6


@dataclass(frozen=True)
class Scene:
    id: str
    things: tuple[Thing, ...]  # in POSITIONS order

    @property
    def layout(self) -> tuple:
        """What the texts describe (no jitter): two scenes with the same layout have the same captions."""
        return tuple((t.colour, t.shape, t.position) for t in self.things)

    def at(self, position: str) -> Thing | None:
        return next((t for t in self.things if t.position == position), None)

    def count(self, colour: str, shape: str) -> int:
        return sum(t.colour == colour and t.shape == shape for t in self.things)


def stable_rng(seed: int, *parts: str) -> random.Random:
    """A generator keyed by the seed and names, independent of Python's hash randomisation."""
    return random.Random(zlib.crc32("/".join([str(seed), *parts]).encode("utf-8")))


def random_scene(rng: random.Random, scene_id: str) -> Scene:
    n = rng.choice((1, 2, 3))
    positions = sorted(rng.sample(POSITIONS, n), key=POSITIONS.index)
    things = tuple(
        Thing(
            rng.choice(tuple(COLOURS)),
            rng.choice(SHAPES),
            position,
            dx=rng.randint(-1, 1),
            dy=rng.randint(-1, 1),
            radius=rng.randint(5, 6),
        )
        for position in positions
    )
    return Scene(scene_id, things)


def make_scenes(seed: int, n_train: int, n_test: int) -> tuple[list[Scene], list[Scene]]:
    """Train and test scenes; no train scene has the layout of a test scene, so the test measures generalisation
    to unseen combinations rather than recall of memorised captions."""
    rng = stable_rng(seed, "test")
    test = [random_scene(rng, f"test-{i:05d}") for i in range(n_test)]
    held_out = {scene.layout for scene in test}
    rng = stable_rng(seed, "train")
    train = []
    while len(train) < n_train:
        scene = random_scene(rng, f"train-{len(train):05d}")
        if scene.layout not in held_out:
            train.append(scene)
    return train, test


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    scale = size / IMAGE_SIZE
    for thing in scene.things:
        fx, fy = SLOT_CENTRES[thing.position]
        cx, cy = fx * size + thing.dx * scale, fy * size + thing.dy * scale
        r = thing.radius * scale
        fill = COLOURS[thing.colour]
        if thing.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif thing.shape == "square":
            s = r * 0.88  # a square of the circle's area looks the same size
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    return image


# ================================================================================================ languages
@dataclass(frozen=True)
class Lexicon:
    """One language's words and templates. Placeholders: {colour}, {shape}, {where} (a slot as an adverbial),
    {at} (a slot as a noun modifier, where the language distinguishes it); `item` describes one shape in a
    caption, `indefinite`/`definite` name a shape in questions (German overrides them for case and gender)."""

    code: str
    colours: dict[str, str]
    shapes: dict[str, str]
    where: dict[str, str]
    item: str
    separator: str
    last_separator: str
    questions: dict[str, str]
    indefinite: str = "{colour} {shape}"
    definite: str = "{colour} {shape}"
    at: dict[str, str] | None = None

    def phrase(self, template: str, colour: str, shape: str, position: str | None = None) -> str:
        return template.format(
            colour=self.colours[colour],
            shape=self.shapes[shape],
            where=self.where.get(position, ""),
        )

    def caption(self, scene: Scene) -> str:
        items = [self.phrase(self.item, t.colour, t.shape, t.position) for t in scene.things]
        text = items[0] if len(items) == 1 else self.separator.join(items[:-1]) + self.last_separator + items[-1]
        return text

    def question(self, kind: str, colour: str | None = None, shape: str | None = None, position: str | None = None):
        slots = {"where": self.where.get(position, ""), "at": (self.at or self.where).get(position, "")}
        if colour is not None:
            slots["indefinite"] = self.phrase(self.indefinite, colour, shape)
            slots["definite"] = self.phrase(self.definite, colour, shape)
        return self.questions[kind].format(**slots)


class GermanLexicon(Lexicon):
    """German adjectives agree with the noun's gender and case: ein roter Kreis, einen roten Kreis, ein rotes
    Quadrat, der rote Kreis, das rote Quadrat."""

    GENDER = {"circle": "m", "square": "n", "triangle": "n"}

    def phrase(self, template: str, colour: str, shape: str, position: str | None = None) -> str:
        stem, noun, male = self.colours[colour], self.shapes[shape], self.GENDER[shape] == "m"
        forms = {
            "{nominative}": f"ein {stem}{'er' if male else 'es'} {noun}",
            "{accusative}": f"{'einen' if male else 'ein'} {stem}{'en' if male else 'es'} {noun}",
            "{definite}": f"{'der' if male else 'das'} {stem}e {noun}",
        }
        for key, value in forms.items():
            template = template.replace(key, value)
        return template.format(where=self.where.get(position, ""))


LEXICONS: dict[str, Lexicon] = {
    "en": Lexicon(
        "en",
        colours={"red": "red", "green": "green", "blue": "blue", "yellow": "yellow"},
        shapes={"circle": "circle", "square": "square", "triangle": "triangle"},
        where={"top": "at the top", "left": "on the left", "right": "on the right", "bottom": "at the bottom"},
        item="a {colour} {shape} {where}",
        separator=", ",
        last_separator=" and ",
        indefinite="a {colour} {shape}",
        definite="the {colour} {shape}",
        questions={
            "count": "How many shapes are there?",
            "colour": "What colour is the shape {where}?",
            "shape": "What shape is {where}?",
            "exists": "Is there {indefinite}?",
            "where": "Where is {definite}?",
        },
    ),
    "de": GermanLexicon(
        "de",
        colours={"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb"},
        shapes={"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck"},
        where={"top": "oben", "left": "links", "right": "rechts", "bottom": "unten"},
        item="{nominative} {where}",
        separator=", ",
        last_separator=" und ",
        indefinite="{accusative}",
        definite="{definite}",
        questions={
            "count": "Wie viele Formen gibt es?",
            "colour": "Welche Farbe hat die Form {where}?",
            "shape": "Welche Form ist {where}?",
            "exists": "Gibt es {indefinite}?",
            "where": "Wo ist {definite}?",
        },
    ),
    "pt": Lexicon(
        "pt",
        colours={"red": "vermelho", "green": "verde", "blue": "azul", "yellow": "amarelo"},
        shapes={"circle": "círculo", "square": "quadrado", "triangle": "triângulo"},
        where={"top": "em cima", "left": "à esquerda", "right": "à direita", "bottom": "em baixo"},
        item="um {shape} {colour} {where}",
        separator=", ",
        last_separator=" e ",
        indefinite="um {shape} {colour}",
        definite="o {shape} {colour}",
        questions={
            "count": "Quantas formas há?",
            "colour": "De que cor é a forma {where}?",
            "shape": "Que forma está {where}?",
            "exists": "Há {indefinite}?",
            "where": "Onde está {definite}?",
        },
    ),
    "id": Lexicon(
        "id",
        colours={"red": "merah", "green": "hijau", "blue": "biru", "yellow": "kuning"},
        shapes={"circle": "lingkaran", "square": "persegi", "triangle": "segitiga"},
        where={"top": "di atas", "left": "di sebelah kiri", "right": "di sebelah kanan", "bottom": "di bawah"},
        item="{shape} {colour} {where}",
        separator=", ",
        last_separator=" dan ",
        indefinite="{shape} {colour}",
        definite="{shape} {colour}",
        questions={
            "count": "Ada berapa bentuk?",
            "colour": "Apa warna bentuk {where}?",
            "shape": "Bentuk apa yang ada {where}?",
            "exists": "Apakah ada {indefinite}?",
            "where": "Di mana {definite}?",
        },
    ),
    "ru": Lexicon(
        "ru",
        colours={"red": "красный", "green": "зелёный", "blue": "синий", "yellow": "жёлтый"},
        shapes={"circle": "круг", "square": "квадрат", "triangle": "треугольник"},  # all masculine
        where={"top": "сверху", "left": "слева", "right": "справа", "bottom": "снизу"},
        item="{colour} {shape} {where}",
        separator=", ",
        last_separator=" и ",
        questions={
            "count": "Сколько здесь фигур?",
            "colour": "Какого цвета фигура {where}?",
            "shape": "Какая фигура {where}?",
            "exists": "Есть ли {indefinite}?",
            "where": "Где {definite}?",
        },
    ),
    "zh": Lexicon(
        "zh",
        colours={"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色"},
        shapes={"circle": "圆形", "square": "正方形", "triangle": "三角形"},
        where={"top": "上面", "left": "左边", "right": "右边", "bottom": "下面"},
        item="{where}有一个{colour}的{shape}",
        separator="，",
        last_separator="，",
        indefinite="{colour}的{shape}",
        definite="{colour}的{shape}",
        questions={
            "count": "图中有几个形状？",
            "colour": "{where}的形状是什么颜色？",
            "shape": "{where}是什么形状？",
            "exists": "有{indefinite}吗？",
            "where": "{definite}在哪里？",
        },
    ),
    "ko": Lexicon(
        "ko",
        colours={"red": "빨간", "green": "초록색", "blue": "파란", "yellow": "노란"},
        shapes={"circle": "원", "square": "사각형", "triangle": "삼각형"},  # all end in a consonant: 이/은 fit
        where={"top": "위쪽", "left": "왼쪽", "right": "오른쪽", "bottom": "아래쪽"},
        item="{where}에 {colour} {shape}",
        separator=", ",
        last_separator=", ",
        questions={
            "count": "도형이 몇 개 있나요?",
            "colour": "{where}에 있는 도형은 무슨 색인가요?",
            "shape": "{where}에 있는 도형은 어떤 모양인가요?",
            "exists": "{indefinite}이 있나요?",
            "where": "{definite}은 어디에 있나요?",
        },
    ),
    "bn": Lexicon(
        "bn",
        colours={"red": "লাল", "green": "সবুজ", "blue": "নীল", "yellow": "হলুদ"},
        shapes={"circle": "বৃত্ত", "square": "বর্গক্ষেত্র", "triangle": "ত্রিভুজ"},
        where={"top": "উপরে", "left": "বাঁদিকে", "right": "ডানদিকে", "bottom": "নিচে"},
        at={"top": "উপরের", "left": "বাঁদিকের", "right": "ডানদিকের", "bottom": "নিচের"},  # genitive: "the ... one"
        item="{where} একটি {colour} {shape}",
        separator=", ",
        last_separator=" এবং ",
        definite="{colour} {shape}টি",
        questions={
            "count": "কয়টি আকৃতি আছে?",
            "colour": "{at} আকৃতিটি কী রঙের?",
            "shape": "{where} কোন আকৃতি আছে?",
            "exists": "কোনো {indefinite} আছে কি?",
            "where": "{definite} কোথায়?",
        },
    ),
}


def caption(scene: Scene, lang: str) -> str:
    return LEXICONS[lang].caption(scene)


# ================================================================================================ questions
@dataclass(frozen=True)
class Question:
    """A question about a scene, independent of language; `text(lang)` writes it, `answer` is English."""

    kind: str
    answer: str
    colour: str | None = None
    shape: str | None = None
    position: str | None = None

    def text(self, lang: str) -> str:
        return LEXICONS[lang].question(self.kind, self.colour, self.shape, self.position)


def ask(scene: Scene, kind: str, rng: random.Random) -> Question | None:
    """A question of one kind with its answer, or None where the scene cannot pose it (e.g. no unique shape)."""
    if kind == "count":
        return Question("count", NUMBERS[len(scene.things)])
    if kind in ("colour", "shape"):
        thing = rng.choice(scene.things)
        return Question(kind, getattr(thing, kind), position=thing.position)
    if kind == "exists":
        if rng.random() < 0.5:  # balanced yes/no, so the answer prior alone gets 50%
            thing = rng.choice(scene.things)
            return Question("exists", "yes", thing.colour, thing.shape)
        absent = [(c, s) for c in COLOURS for s in SHAPES if scene.count(c, s) == 0]
        colour, shape = rng.choice(absent)
        return Question("exists", "no", colour, shape)
    if kind == "where":
        unique = [t for t in scene.things if scene.count(t.colour, t.shape) == 1]
        if not unique:
            return None
        thing = rng.choice(unique)
        return Question("where", thing.position, thing.colour, thing.shape)
    raise ValueError(f"unknown question kind {kind!r}; expected one of {QUESTION_KINDS}")


def questions(scene: Scene, n: int, rng: random.Random) -> list[Question]:
    """n questions of distinct kinds (kinds drawn at random; kinds the scene cannot pose are skipped)."""
    out = []
    for kind in rng.sample(QUESTION_KINDS, len(QUESTION_KINDS)):
        question = ask(scene, kind, rng)
        if question is not None:
            out.append(question)
        if len(out) == n:
            break
    return out


# ================================================================================================ files
def image_name(scene: Scene) -> str:
    return f"{scene.id}.jpg"  # XM3600 and GQA images are <key>.jpg; the evaluation readers look for that name


def save_images(scenes: list[Scene], folder: Path) -> None:
    """Writes each scene's image once (existing files are kept: the pixels are a function of the scene).

    PNG-compressed pixels in a .jpg-named file would confuse other tools, so the files are real JPEGs, at a quality
    high enough that the flat colours survive."""
    folder.mkdir(parents=True, exist_ok=True)
    for scene in scenes:
        path = folder / image_name(scene)
        if not path.exists():  # written atomically: a killed run leaves no truncated image to keep
            with atomic_open(path, "wb") as handle:
                render(scene).save(handle, format="JPEG", quality=95, subsampling=0)


def write_xm3600(scenes: list[Scene], path: Path, languages=LANGUAGES) -> None:
    """XM3600's captions.jsonl: one object per image with every language's captions."""
    rows = []
    for scene in scenes:
        row = {"image/key": scene.id, "image/locale": "en"}
        for lang in languages:
            text = caption(scene, lang)
            row[lang] = {"caption": [text], "caption/tokenized": [text.lower()]}
        rows.append(row)
    write_jsonl(path, rows)


def write_xgqa(scenes: list[Scene], folder: Path, seed: int, per_scene: int = 2, languages=LANGUAGES) -> None:
    """xGQA's few_shot/<lang>/test.json: GQA-format questions keyed by id, the same ids in every language
    (questions translated, answers English)."""
    rng = stable_rng(seed, "test-questions")
    asked = [(scene, q) for scene in scenes for q in questions(scene, per_scene, rng)]
    for lang in languages:
        rows = {
            f"{scene.id}-q{i}": {
                "question": q.text(lang),
                "imageId": scene.id,
                "answer": q.answer,
                "fullAnswer": q.answer,
                "kind": q.kind,
            }
            for i, (scene, q) in enumerate(asked)
        }
        with atomic_open(folder / "few_shot" / lang / "test.json") as handle:
            json.dump(rows, handle, ensure_ascii=False, indent=1)
