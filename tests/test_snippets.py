"""Every ```python and ```bash block of README.md, eval/README.md and of freshly written model cards runs as written.

A user copies these snippets; a snippet that stops working fails here. Each document's blocks run in order, each in a
fresh process, in one temporary workspace per document (so a later block may use what an earlier one wrote, as a
reader following the page would). Python blocks run from that workspace with the script outside it and the
repository off `sys.path`, which proves they work from any directory once the package is installed. Bash blocks run
there too, with the repository's entry points (`predict.py`, `convert_mblip.py`, `eval/`, ...) linked in, since the
README runs them from the repository root.

Nothing is downloaded: the substitution table below swaps Hub ids for tiny local repositories (text replacement),
and the workspace holds tiny files under the names the snippets use:

| in a snippet | stands for | here |
|---|---|---|
| `org/mblip-mt0-xl`, a card's own Hub id | an mBLIP model repository | a tiny mT5 mBLIP converted by convert_mblip.py |
| `Gregor/mblip-mt0-xl`, `Salesforce/blip2-flan-t5-xl` | a BLIP-2 checkpoint (the released format) | a tiny BLIP-2 (conftest.make_blip2) |
| `bigscience/mt0-xl` | the multilingual LLM | a tiny mT5 (conftest.save_llm) |
| `photo.jpg`, `example.jpg`, `cat.jpg`, `street.png`, `photos/` | images | generated images |
| `outputs/demo/mblip`, `outputs/tiny-mblip` | the demo's models | the tiny mBLIP repository |
| `questions.jsonl` | predict.py's prompts file | two rows on the images above |
| `benchmarks/xm3600` | XM3600 (`captions.jsonl`, `images/`) | three images in the released format, de/en/fr/zh |

A block that cannot run here (a GPU, the Hub, benchmark downloads, a server, a long job) carries the marker
`<!-- snippet: skip reason=... -->` on the line before its fence (`mblip.cards.SKIP_MARKER`); the tests print how many
blocks they skipped and why. Any other block runs, so new sections are covered without touching this file.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import make_blip2, save_llm
from huggingface_hub import EvalResult, ModelCard
from PIL import Image

from mblip import convert as convert_mblip
from mblip.cards import RESULTS_END, RESULTS_START, SKIP_MARKER, merge_eval_results, model_card


ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ["README.md", "eval/README.md"]
# The repository's entry points, linked into the workspace of bash blocks (the README runs them from the root).
ENTRY_POINTS = ["predict.py", "app.py", "convert_mblip.py", "train_mblip.py", "eval", "configs", "scripts"]
# Seconds one block may take; a block that needs longer belongs behind a skip marker.
BLOCK_TIMEOUT = 180
CARD_ID = "org/mblip-tiny"  # convert_mblip.py's default for --output_dir mblip-tiny
EXPORT_ID = "org/mblip-tiny-blip2"

SKIP = re.compile(r"^<!--\s*snippet:\s*skip\s+reason=(?P<reason>.*?)\s*-->$")
FENCE = re.compile(r"^\s*```(?P<lang>[\w+-]*)\s*$")  # also inside list items (indented)


@dataclass
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None  # the marker's reason


def code_blocks(text: str) -> list[Block]:
    """The fenced blocks of a markdown text with their language, line and skip reason (the marker must be the last
    non-blank line before the fence)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        skip = SKIP.match(before)
        code = textwrap.dedent("\n".join(body)) + "\n"
        blocks.append(Block(match["lang"], start + 1, code, skip["reason"] if skip else None))
        i += 1
    return blocks


def test_block_parser_reads_markers_and_lines():
    text = "\n".join(
        [
            "# t",
            "```python",
            "print(1)",
            "```",
            "",
            SKIP_MARKER.format("needs a GPU"),
            "",
            "```bash",
            "nvidia-smi",
            "```",
        ]
    )
    blocks = code_blocks(text)
    assert [(b.lang, b.line, b.skip) for b in blocks] == [("python", 2, None), ("bash", 8, "needs a GPU")]
    assert blocks[0].code == "print(1)\n"
    indented = code_blocks("- item:\n\n  " + SKIP_MARKER.format("r") + "\n  ```python\n  x = 1\n    y = 2\n  ```\n")
    assert [(b.lang, b.line, b.skip, b.code) for b in indented] == [("python", 4, "r", "x = 1\n  y = 2\n")]


# ---------------------------------------------------------------------------------------------------- the workspace
def _image(path: Path, seed: int, size=(48, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(path)


def write_xm3600(root: Path, languages=("de", "en", "fr", "zh")):
    """XM3600's released captions.jsonl (an entry per language per image) and its images folder."""
    captions = {
        "de": ["ein roter Kreis über einem blauen Quadrat", "zwei grüne Dreiecke"],
        "en": ["a red circle above a blue square", "two green triangles"],
        "fr": ["un cercle rouge au-dessus d'un carré bleu", "deux triangles verts"],
        "zh": ["蓝色正方形上方有一个红色圆圈", "左边有两个绿色三角形"],
    }
    rows = []
    for i, key in enumerate(["a1b2c3", "d4e5f6", "0f9e8d"]):
        _image(root / "images" / f"{key}.jpg", i)
        row = {"image/key": key, "image/locale": "en"}
        for lang in languages:
            row[lang] = {"caption": captions[lang], "caption/tokenized": ["x"], "caption/tokenized/lowercase": ["x"]}
        rows.append(row)
    root.mkdir(parents=True, exist_ok=True)
    (root / "captions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")


@pytest.fixture(scope="module")
def repositories(tmp_path_factory):
    """Tiny stand-ins for the Hub ids, made the way users make theirs: a BLIP-2 checkpoint converted with
    convert_mblip.py (whose card is one of the cards under test) and exported back to plain BLIP-2 (the other)."""
    root = tmp_path_factory.mktemp("repositories")
    make_blip2("mt5", root / "blip2")
    save_llm("mt5", root / "llm")
    assert convert_mblip.main(["--from_blip2", str(root / "blip2"), "--output_dir", str(root / "mblip-tiny")]) == 0
    assert (
        convert_mblip.main(["--to_blip2", str(root / "mblip-tiny"), "--output_dir", str(root / "mblip-tiny-blip2")])
        == 0
    )
    return {
        "mblip": root / "mblip-tiny",
        "blip2": root / "blip2",
        "llm": root / "llm",
        "export": root / "mblip-tiny-blip2",
    }


def substitutions(repositories) -> dict[str, Path]:
    """The Hub ids snippets name -> the local repositories that stand for them (see the module docstring)."""
    return {
        "org/mblip-mt0-xl": repositories["mblip"],
        CARD_ID: repositories["mblip"],
        EXPORT_ID: repositories["export"],
        "Gregor/mblip-mt0-xl": repositories["blip2"],
        "Salesforce/blip2-flan-t5-xl": repositories["blip2"],
        "bigscience/mt0-xl": repositories["llm"],
    }


def substitute(code: str, table: dict[str, Path]) -> str:
    for hub_id, path in table.items():
        code = re.sub(rf"(?<![\w./-]){re.escape(hub_id)}(?![\w/-])", str(path), code)
    return code


def workspace(path: Path, repositories) -> Path:
    """A working directory holding the files the snippets name."""
    path.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(["photo.jpg", "example.jpg", "cat.jpg", "street.png"]):
        _image(path / name, i)
    for i in range(3):
        _image(path / "photos" / f"{i}.jpg", 10 + i)
    rows = [
        {"image": "cat.jpg", "prompt": "Question: What animal is this? Short answer in English:"},
        {"image": "street.png", "prompt": "Caption the image in German."},
    ]
    (path / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (path / "outputs" / "demo").mkdir(parents=True)
    (path / "outputs" / "demo" / "mblip").symlink_to(repositories["mblip"], target_is_directory=True)
    (path / "outputs" / "tiny-mblip").symlink_to(repositories["mblip"], target_is_directory=True)
    write_xm3600(path / "benchmarks" / "xm3600")
    return path


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        GRADIO_ANALYTICS_ENABLED="False",
        TOKENIZERS_PARALLELISM="false",
        CUDA_VISIBLE_DEVICES="",
        MPLBACKEND="Agg",
    )
    return env


def run_block(block: Block, code: str, cwd: Path, scripts: Path) -> subprocess.CompletedProcess:
    if block.lang == "python":
        # The script lies outside the workspace, so neither the workspace nor the repository is on sys.path.
        script = scripts / f"line{block.line}.py"
        script.write_text(code, encoding="utf-8")
        command = [sys.executable, str(script)]
    else:
        for name in ENTRY_POINTS:
            if not (cwd / name).exists():
                (cwd / name).symlink_to(ROOT / name)
        command = ["bash", "-e", "-o", "pipefail", "-c", code]
    env = environment()
    # `python` in a bash block is this interpreter, the one the package is installed in.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT, stdin=subprocess.DEVNULL
    )


def run_document(name: str, text: str, folder: Path, repositories) -> dict:
    """Runs every runnable block of `text` in order, in one workspace; returns what ran, what was skipped and each
    broken block's line and output."""
    blocks = [b for b in code_blocks(text) if b.lang in ("python", "bash")]
    cwd = workspace(folder / "work", repositories)
    scripts = folder / "scripts"
    scripts.mkdir()
    table = substitutions(repositories)
    report = {"blocks": len(blocks), "ran": [], "skipped": [], "failures": []}
    for block in blocks:
        if block.skip is not None:
            report["skipped"].append(f"{name}:{block.line} ({block.lang}): {block.skip}")
            continue
        started = time.perf_counter()
        try:
            result = run_block(block, substitute(block.code, table), cwd, scripts)
        except subprocess.TimeoutExpired:
            report["failures"].append(
                f"{name}:{block.line} ({block.lang}) ran past {BLOCK_TIMEOUT} s: mark or shorten it"
            )
            continue
        report["ran"].append(f"{name}:{block.line} ({block.lang}) {time.perf_counter() - started:.1f} s")
        if result.returncode != 0:
            output = (result.stdout + result.stderr)[-3000:]
            report["failures"].append(f"{name}:{block.line} ({block.lang}) exited {result.returncode}:\n{output}")
    return report


def cards(repositories) -> dict[str, str]:
    """The cards convert_mblip.py just wrote: an mBLIP repository's and its plain BLIP-2 export's."""
    return {f"{name} card": ModelCard.load(repositories[name] / "README.md").text for name in ("mblip", "export")}


@pytest.fixture(scope="module")
def reports(repositories, tmp_path_factory):
    """Every document's blocks, two documents at a time (each document's blocks in order)."""
    documents = {name: (ROOT / name).read_text(encoding="utf-8") for name in DOCUMENTS} | cards(repositories)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(run_document, name, text, tmp_path_factory.mktemp("snippets"), repositories)
            for name, text in documents.items()
        }
        return {name: future.result() for name, future in futures.items()}


def check(report: dict, name: str):
    print(f"\n{name}: ran {len(report['ran'])} blocks, skipped {len(report['skipped'])}")
    for line in report["ran"]:
        print(f"  ran {line}")
    for line in report["skipped"]:
        print(f"  skipped {line}")
    assert report["blocks"], f"{name} has no python or bash block"
    assert report["ran"], f"{name}: every block is skipped"
    assert not report["failures"], "\n\n".join(report["failures"])


# ---------------------------------------------------------------------------------------------------- the documents
@pytest.mark.parametrize("document", DOCUMENTS)
def test_documentation_snippets_run(document, reports):
    check(reports[document], document)


@pytest.mark.parametrize("repository", ["mblip", "export"])
def test_model_card_snippets_run(repository, repositories, reports):
    """The cards convert_mblip.py just wrote run as written, with their own Hub id standing for the repository."""
    text = ModelCard.load(repositories[repository] / "README.md").text
    own_id = CARD_ID if repository == "mblip" else EXPORT_ID
    assert f'from_pretrained("{own_id}"' in text
    assert "## Evaluation" in text and "python -m eval --model" in text
    check(reports[f"{repository} card"], f"{repository} card")


# ---------------------------------------------------------------------------------------------------- card contents
def _result(dataset, title, language, metric, name, value, task="image-to-text"):
    return EvalResult(
        task_type=task,
        dataset_type=dataset,
        dataset_name=f"{title} ({language}, test)",
        dataset_config=language,
        dataset_split="test",
        metric_type=metric,
        metric_value=value,
        metric_name=name,
    )


def test_card_without_results_lists_the_papers_benchmarks_and_what_users_ask_for():
    text = model_card("t", "d", repo_id="me/mblip-x").text
    evaluation = text.split("## Evaluation")[1]
    for task in ("xm3600", "xflickrco", "xgqa", "maxm", "xvnli", "marvl"):
        assert f"python -m eval --model me/mblip-x --task {task} " in evaluation
    assert "No results yet" in evaluation
    usage = text.split("## Usage")[1].split("## Evaluation")[0]
    assert "Caption in {language}:" in usage and "Short answer in English:" in usage  # the paper's prompts
    assert "load_in_8bit=True" in usage and "load_in_4bit=True" in usage
    assert 'pipeline("image-text-to-text", model="me/mblip-x", trust_remote_code=True)' in usage
    assert "pipeline(" not in model_card("t", "d", chat_template=False).text


def test_card_results_table_and_model_index_follow_the_results(tmp_path):
    results = [
        _result("crossmodal-3600", "XM3600", "de", "cider", "CIDEr", 51.25),
        _result("crossmodal-3600", "XM3600", "en", "cider", "CIDEr", 80.0),
    ]
    card = model_card("t", "d", repo_id="me/mblip-x", eval_results=results)
    card.save(tmp_path / "README.md")
    card = ModelCard.load(tmp_path / "README.md")
    evaluation = card.text.split("## Evaluation")[1]
    # Only the benchmarks whose scores the card holds get a command.
    assert "--task xm3600 --data_dir" in evaluation and "--task xgqa" not in evaluation
    table = evaluation.split(RESULTS_START)[1].split(RESULTS_END)[0]
    assert "| language | XM3600 CIDEr |" in table and "| de | 51.2 |" in table and "| en | 80.0 |" in table
    assert card.data.eval_results == results  # the model-index metadata
    merge_eval_results(card, [_result("xgqa", "xGQA", "de", "acc", "Acc.", 40.0, "visual-question-answering")])
    table = card.text.split(RESULTS_START)[1].split(RESULTS_END)[0]
    assert "| language | XM3600 CIDEr | xGQA Acc. |" in table and "| de | 51.2 | 40.0 |" in table
    assert "| en | 80.0 |  |" in table and len(card.data.eval_results) == 3
