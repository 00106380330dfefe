"""Translation engine and the task-mix pipeline (data/translate.py) with a tiny random NLLB-shaped model.

The model and its tokenizer are built on the spot (data/tiny_nllb.py); nothing is downloaded. Random weights write
noise, so most tests relax the filters that would (rightly) drop it; the filters themselves are tested on real text
in test_data_filters.py.
"""

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mblip.data.inputs import Columns, load_examples
from mblip.data.templates import resolve_task
from mblip.data.tiny_nllb import CORPUS, build_tiny_nllb
from mblip.data.translate import (
    LengthCapLogitsProcessor,
    Translator,
    build_task_mix,
    join_sentences,
    main,
    make_shards,
    parse_args,
    plan_assignments,
    split_sentences,
)


# Short token budgets for runs that load the model from --model (see make_translator).
SHORT = ["--max_len_a", "1", "--max_len_b", "4"]
RELAXED = [
    "--drop_truncated",
    "false",
    "--check_language",
    "false",
    "--max_length_ratio",
    "100",
    "--repetition_min_repeats",
    "1000",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Two threads on a shared two-core machine spin-wait on each other: ~30x slower generation.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_tiny_nllb()


@pytest.fixture(scope="module")
def tiny_dir(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-nllb")
    model, tokenizer = tiny
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class RecordingTranslator(Translator):
    """Counts model calls and remembers every sentence sent to the model; can fail after some calls (a kill)."""

    fail_after = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def translate(self, texts, language, desc=None):
        self.seen.extend(texts)
        return super().translate(texts, language, desc)

    def generate_batch(self, input_ids, token_id):
        if self.fail_after is not None and self.generate_calls >= self.fail_after:
            raise RuntimeError("simulated kill")
        return super().generate_batch(input_ids, token_id)


def make_translator(tiny, cls=Translator, **kwargs):
    model, tokenizer = tiny
    # Short budgets: the random decoder always runs to its budget, and the tests need no long outputs.
    kwargs = {"batch_size": 8, "max_len_a": 1.0, "max_len_b": 4, **kwargs}
    return cls(model, tokenizer, show_progress=False, **kwargs)


def example_rows(n_per_task=4):
    """Rows of every task with unique texts, plus extra columns that must pass through."""
    rows = []
    for i in range(n_per_task):
        rows += [
            {
                "image_id": f"cap{i}.jpg",
                "label": f"A dog number {i} runs along the beach.",
                "task": "caption",
                "source": "coco",
            },
            {
                "image_id": f"vqa{i}.jpg",
                "context": f"What color is bus {i}?",
                "label": f"red {i}",
                "task": "vqa",
                "question_id": i,
            },
            {
                "image_id": f"rat{i}.jpg",
                "context": f"Why is person {i} happy?",
                "label": f"sun {i}",
                "rationale": f"The sun shines on person {i}",
                "task": "aokvqa",
            },
            {
                "image_id": f"ins{i}.jpg",
                "context": f"Describe picture {i} in detail.",
                "label": f"Two people ride bicycles {i}. The street is busy.\nCars pass by {i}.",
                "task": "instruction",
            },
            {
                "image_id": f"itm{i}.jpg",
                "context": f"A cat {i} sleeps on a sofa.",
                "label": "yes" if i % 2 else "no",
                "task": "matching",
            },
            {"image_id": f"cls{i}.jpg", "label": f"golden retriever {i}", "task": "classification"},
        ]
    return rows


def write_jsonl(path, rows, extra_lines=()):
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
        for line in extra_lines:
            handle.write(line + "\n")
    return path


def read_rows(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def run_mix(input_path, output, translator, *extra):
    args = parse_args(["--input", str(input_path), "--output", str(output), "--progress", "false", *extra])
    return build_task_mix(*args, translator=translator)


# ---- translation engine ---------------------------------------------------------------------------------------------


def naive_loop(translator, texts, language, batch_size):
    """How the official scripts translate: batches in input order, padded to the longest, one generate call each."""
    model, tokenizer = translator.model, translator.tokenizer
    token_id = tokenizer.convert_tokens_to_ids(translator.target_token(language))
    outputs = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True)
        caps = translator.budgets(batch["attention_mask"].sum(-1).tolist())
        generated = model.generate(**batch, **translator.generation_kwargs(token_id, caps))
        outputs += [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    return outputs


def test_sorted_batches_give_the_naive_loops_outputs(tiny):
    texts = [" ".join(CORPUS[i : i + k]) for k in (1, 3, 2) for i in range(0, 12, 2)]  # 1 to 3 sentences each
    translator = make_translator(tiny, batch_size=4)
    sorted_out = [t.text for t in translator.translate(texts, "de")]
    assert sorted_out == naive_loop(translator, texts, "de", batch_size=4)
    assert len(set(sorted_out)) == len(set(texts))  # the random model's output depends on its input
    assert translator.generate_calls == 5  # 18 sentences in batches of 4


def test_length_budget_ends_each_row_at_its_own_cap(tiny):
    model, tokenizer = tiny
    batch = tokenizer(["A dog.", "Two people ride bicycles down a busy street."], return_tensors="pt", padding=True)
    caps = torch.tensor([3, 7])
    out = model.generate(
        **batch,
        forced_bos_token_id=tokenizer.convert_tokens_to_ids("deu_Latn"),
        max_new_tokens=7,
        logits_processor=[LengthCapLogitsProcessor(caps, tokenizer.eos_token_id)],
        do_sample=False,
    )
    for row, cap in zip(out.tolist(), caps.tolist()):
        eos = row.index(tokenizer.eos_token_id, 1)
        assert eos <= cap  # new tokens including EOS never exceed the budget
        assert row[1] == tokenizer.convert_tokens_to_ids("deu_Latn")
    # The random model never stops by itself: both rows are ended by their budget and reported as truncated.
    translator = make_translator(tiny, max_len_a=0.0, max_len_b=4)
    assert {
        t.status for t in translator.translate(["A dog.", "Two people ride bicycles down a busy street."], "fr")
    } == {"truncated"}


def test_duplicates_translate_once_and_overlong_sources_are_not_sent(tiny):
    translator = make_translator(tiny, max_source_length=12)
    long_text = " ".join(["beach"] * 40)
    out = translator.translate(["A dog runs.", "Ein Hund.", "A dog runs.", long_text], "fr")
    assert translator.sentences_translated == 2 and translator.generate_calls == 1
    assert out[0] == out[2] and out[3].text is None and out[3].status == "source_too_long"


def test_missing_target_language_token_fails_before_translating(tiny):
    translator = make_translator(tiny, lang_token_format="__{iso}__")  # M2M100-style codes this tokenizer lacks
    with pytest.raises(ValueError, match=r"no target-language token for: de \(__de__\), sw \(__sw__\)"):
        translator.check_languages(["de", "sw"])
    assert translator.generate_calls == 0


def test_sentence_splitting_round_trip():
    text = "Two people ride bicycles. The street is busy!\n\nCars pass by. e.g. this stays."
    sentences, separators = split_sentences(text)
    assert sentences == ["Two people ride bicycles.", "The street is busy!", "Cars pass by. e.g. this stays."]
    assert join_sentences(sentences, separators, "de") == text
    assert join_sentences(["一只狗。", "两个人。"], [" "], "zh") == "一只狗。两个人。"


def test_short_answers_drop_the_full_stop_the_model_adds():
    from mblip.data.translate import _match_final_punctuation

    assert _match_final_punctuation("red", "Rot.") == "Rot"
    assert _match_final_punctuation("two dogs", "两只狗。") == "两只狗"
    assert _match_final_punctuation("Yes, it is.", "Ja, das ist es.") == "Ja, das ist es."
    assert _match_final_punctuation("red", "...") == "..."  # never empties an answer


# ---- the pipeline ---------------------------------------------------------------------------------------------------


def test_cli_end_to_end(tiny_dir, tmp_path):
    rows = example_rows()
    bad = [
        {"label": "no image", "task": "caption"},
        {"image_id": "x.jpg", "task": "caption"},
        {"image_id": "y.jpg", "label": "a cat", "task": "poetry"},
        {"image_id": "z.jpg", "context": "Q?", "label": "maybe", "task": "matching"},
    ]
    source = write_jsonl(tmp_path / "en.jsonl", rows + bad, extra_lines=["{broken json"])
    out = tmp_path / "mix"
    argv = [
        "--input",
        str(source),
        "--output",
        str(out),
        "--languages",
        "de,fr,zh",
        "--model",
        str(tiny_dir),
        "--english_share",
        "0.25",
        "--shard_size",
        "3",
        "--max_bad_rows",
        "0.2",
        "--progress",
        "false",
        "--ctranslate2_cache_dir",  # the default engine (auto) is ctranslate2 where it is installed
        str(tmp_path / "ct2"),
        *SHORT,
        *RELAXED,
    ]
    assert main(argv) == 0

    mix = read_rows(out / "train.jsonl")
    report = json.loads((out / "report.json").read_text())
    # Columns train_mblip.py reads, plus lang and task; extra columns pass through.
    assert all(list(r)[:5] == ["image_id", "context", "label", "lang", "task"] for r in mix)
    assert {r["lang"] for r in mix} == {"en", "de", "fr", "zh"}
    tasks = {resolve_task(r["task"]) for r in rows}  # the tasks of the example rows
    assert {r["task"] for r in mix} == tasks
    # Relaxed filters keep every example except one: the random model mangles the placeholders of the rationale
    # task's target templates ("{rationale} So the answer is {answer}."), so non-English rationale examples have
    # no template. They are dropped and counted, never rendered with an English target.
    rationale_translated = {r["image_id"] for r in mix if r["task"] == "vqa_rationale" and r["lang"] != "en"}
    assert not rationale_translated
    kept = [r["image_id"] for r in mix]
    assert len(kept) == len(set(kept)) == 21
    assert {r["image_id"] for r in rows if r["task"] != "aokvqa"} <= set(kept)
    assert sum(image_id.startswith("rat") for image_id in kept) == 1  # the English one
    for lang in ("de", "fr", "zh"):
        assert report["languages"][lang]["dropped"] == {"no_template": 1}
        assert report["templates"][lang]["dropped"]["placeholder"] > 0
    assert [r["source"] for r in mix if r["image_id"].startswith("cap")] == ["coco"] * 4
    # Every task keeps a quarter in English (english_share 0.25 of 4 rows).
    assert all(sum(r["lang"] == "en" and r["task"] == t for r in mix) == 1 for t in tasks)
    english = {r["image_id"]: r for r in mix if r["lang"] == "en"}
    for row in rows:
        if row["image_id"] in english and row["task"] == "caption":
            assert english[row["image_id"]]["label"] == row["label"]  # English is not translated
    named = [r for r in mix if r["lang"] == "de" and "German" in r["context"]]
    assert named, "some German prompts name the language in English"

    malformed = report["input"]["malformed"]
    assert malformed["count"] == 5
    assert malformed["by_reason"] == {
        "missing_image": 1,
        "missing_target": 1,
        "unknown_task": 1,
        "bad_match_label": 1,
        "invalid_json": 1,
    }
    assert len(malformed["examples"]) == 5 and "broken json" in malformed["examples"][-1]["excerpt"]
    assert report["rows"] == len(mix) == report["totals"]["kept"] == 21
    assert report["totals"]["assigned"] == 24
    assert sum(report["sampling"]["planned"]["caption"].values()) == 4


def test_default_filters_count_what_they_drop(tiny, tmp_path):
    source = write_jsonl(tmp_path / "en.jsonl", example_rows(4))
    options = ["--languages", "de,sw", "--english_share", "0.5", "--sampling", "uniform"]
    report = run_mix(source, tmp_path / "mix", make_translator(tiny), *options)
    # Random translations never end by themselves: every translated example hits its budget and is dropped.
    for lang in ("de", "sw"):
        entry = report["languages"][lang]
        assert entry["kept"] + sum(entry["dropped"].values()) == entry["assigned"] > 0
        assert entry["kept"] == 0 and set(entry["dropped"]) <= {"too_long", "empty"}
        assert entry["assigned"] == 6
    assert report["languages"]["en"] == {"assigned": 12, "kept": 12, "dropped": {}, "langid": {}}
    assert report["rows"] == 12


def test_help_and_clear_errors(tmp_path, capsys, caplog):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--languages" in help_text and "--english_share" in help_text and "--max_bad_rows" in help_text

    source = write_jsonl(tmp_path / "en.jsonl", example_rows(1))
    with caplog.at_level(logging.ERROR):
        assert main(["--input", str(source), "--output", str(tmp_path / "a"), "--languages", "de,xx"]) == 2
    assert "Unknown language code(s) 'xx'" in caplog.text and "af (Afrikaans)" in caplog.text

    rows = example_rows(1) + [{"image_id": "", "label": "x", "task": "caption"}] * 3
    source = write_jsonl(tmp_path / "bad.jsonl", rows)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["--input", str(source), "--output", str(tmp_path / "b"), "--max_bad_rows", "0.1"]) == 2
    assert "3 of 9 input rows (33.3%) are malformed, more than --max_bad_rows=0.1" in caplog.text
    assert "missing_image: 3" in caplog.text and not (tmp_path / "b" / "train.jsonl").exists()


def make_shards_of(source, options):
    """The shards a run plans, recomputed from its arguments (the plan is deterministic)."""
    _, language_args, translation_args, _ = parse_args(["--input", str(source), "--output", "unused", *options])
    examples, _, _ = load_examples(str(source), Columns())
    assignment, _ = plan_assignments(examples, language_args)
    return make_shards(assignment, translation_args.shard_size)


def test_resume_after_a_kill_skips_finished_shards_and_duplicates_nothing(tiny, tmp_path):
    source = write_jsonl(tmp_path / "en.jsonl", example_rows(4))
    options = ["--languages", "de,fr", "--english_share", "0.25", "--shard_size", "3", *RELAXED]
    clean = make_translator(tiny, RecordingTranslator)
    run_mix(source, tmp_path / "clean", clean, *options)
    expected = (tmp_path / "clean" / "train.jsonl").read_text()
    # Templates are translated once per language (de, fr), not once per shard or example.
    assert (
        clean.seen.count("Caption the image.") == 2
        and clean.seen.count("Reason the answer to the following question. {0}") == 2
    )

    out = tmp_path / "mix"
    killed = make_translator(tiny, RecordingTranslator)
    killed.fail_after = clean.generate_calls - 1  # dies in the last batch of the last shard
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_mix(source, out, killed, *options)
    shards_dir = out / "shards"
    done = sorted(p.name[: -len(".done.json")] for p in shards_dir.glob("*.done.json"))
    translated_done = [name for name in done if not name.startswith("en-")]
    assert (
        len(translated_done) >= 2
        and len(done) < len(make_shards_of(source, options))
        and not (out / "train.jsonl").exists()
    )
    # A kill between a shard's data and its marker: the shard must be redone, not trusted.
    redo = translated_done[-1]
    (shards_dir / f"{redo}.done.json").unlink()
    finished = {name: (shards_dir / f"{name}.jsonl").stat().st_mtime_ns for name in done if name != redo}
    (shards_dir / ".de-00009.jsonl.4242.tmp").write_text("half a shard")  # a kill in the middle of a write

    resumed = make_translator(tiny, RecordingTranslator)
    run_mix(source, out, resumed, *options)
    assert (out / "train.jsonl").read_text() == expected  # same rows, same order: nothing lost, nothing twice
    assert {name: (shards_dir / f"{name}.jsonl").stat().st_mtime_ns for name in finished} == finished
    assert not list(shards_dir.glob(".*.tmp"))

    # No sentence of a finished shard went to the model again.
    by_index = {e.index: e for e in load_examples(str(source), Columns())[0]}
    finished_sources = {
        str(by_index[i].fields[role]).strip()
        for shard in make_shards_of(source, options)
        if shard.name in finished and shard.language != "en"
        for i in shard.indices
        for role in ("context", "label", "rationale")
        if by_index[i].fields.get(role)
    }
    assert finished_sources and not finished_sources & set(resumed.seen)
    assert 0 < resumed.generate_calls < clean.generate_calls
    mix = read_rows(out / "train.jsonl")
    assert len({(r["image_id"], r["task"]) for r in mix}) == len(mix) == 21  # see test_cli_end_to_end


def test_changed_settings_refuse_to_resume(tiny, tmp_path):
    source = write_jsonl(tmp_path / "en.jsonl", example_rows(1))
    run_mix(source, tmp_path / "mix", make_translator(tiny), "--languages", "de", *RELAXED)
    with pytest.raises(ValueError, match=r"(?s)other settings.*seed: 42 -> 7"):
        run_mix(source, tmp_path / "mix", make_translator(tiny), "--languages", "de", "--seed", "7", *RELAXED)
    # Batch size does not change the outputs, so it may change on resume (after an out-of-memory error, say).
    run_mix(source, tmp_path / "mix", make_translator(tiny), "--languages", "de", "--batch_size", "2", *RELAXED)
    fresh = ["--languages", "de", "--seed", "7", "--overwrite", "true", *RELAXED]
    report = run_mix(source, tmp_path / "mix", make_translator(tiny), *fresh)
    assert report["sampling"]["seed"] == 7


def test_a_changed_model_at_the_same_path_refuses_to_resume(tiny, tiny_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    source = write_jsonl(tmp_path / "en.jsonl", example_rows(1))
    options = ["--languages", "de", "--model", str(model), *RELAXED]
    run_mix(source, tmp_path / "mix", make_translator(tiny), *options)
    # Retrained into the same folder: the path is the same, the translations would not be.
    weights = next(model.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match=r"(?s)other settings.*model_identity.*--overwrite to start over"):
        run_mix(source, tmp_path / "mix", make_translator(tiny), *options)
    run_mix(source, tmp_path / "mix", make_translator(tiny), *options, "--overwrite_output_dir")  # deprecated name


def test_parquet_output_holds_the_same_rows(tiny, tmp_path):
    import pyarrow.parquet as pq

    source = write_jsonl(tmp_path / "en.jsonl", example_rows(2))
    run_mix(source, tmp_path / "mix", make_translator(tiny), "--languages", "de", *RELAXED)
    run_mix(
        source, tmp_path / "mix", make_translator(tiny), "--languages", "de", "--output_format", "parquet", *RELAXED
    )
    jsonl = read_rows(tmp_path / "mix" / "train.jsonl")
    table = pq.read_table(tmp_path / "mix" / "train.parquet").to_pylist()
    assert [{k: v for k, v in r.items() if v is not None} for r in table] == jsonl


def test_english_pivot_needs_no_model(tmp_path):
    source = write_jsonl(tmp_path / "en.jsonl", example_rows(2))
    args = parse_args(
        [
            "--input",
            str(source),
            "--output",
            str(tmp_path / "mix"),
            "--english_share",
            "1.0",
            "--model",
            str(tmp_path / "no-such-model"),
            "--progress",
            "false",
        ]
    )
    report = build_task_mix(*args)  # would fail if it tried to load the model
    mix = read_rows(tmp_path / "mix" / "train.jsonl")
    assert {r["lang"] for r in mix} == {"en"} and len(mix) == 12 and report["totals"]["kept"] == 12


def test_csv_and_saved_datasets_read_like_jsonl(tmp_path):
    import datasets

    rows = [{k: str(v) for k, v in r.items()} for r in example_rows(1) if r["task"] in ("caption", "vqa")]
    rows = [
        {"image_id": r["image_id"], "context": r.get("context", ""), "label": r["label"], "task": r["task"]}
        for r in rows
    ]
    expected, _, _ = load_examples(write_jsonl(tmp_path / "en.jsonl", rows))
    dataset = datasets.Dataset.from_list(rows)
    dataset.to_csv(tmp_path / "en.csv", index=False)
    dataset.save_to_disk(tmp_path / "saved")
    for source in (tmp_path / "en.csv", tmp_path / "saved", dataset):
        examples, malformed, n = load_examples(source)
        assert (n, malformed.count) == (2, 0)
        assert [(e.task, e.image_id, e.fields) for e in examples] == [(e.task, e.image_id, e.fields) for e in expected]


class FakeProcess:
    """One of ``n`` data-parallel processes, run one after the other in this process (accelerate's contract:
    contiguous splits, main process = index 0)."""

    def __init__(self, index, n):
        self.process_index, self.num_processes = index, n
        self.is_main_process = self.is_local_main_process = index == 0
        self.device = torch.device("cpu")

    def wait_for_everyone(self):
        pass

    @contextlib.contextmanager
    def split_between_processes(self, items):
        per, extra = divmod(len(items), self.num_processes)
        start = self.process_index * per + min(self.process_index, extra)
        yield items[start : start + per + (self.process_index < extra)]


def test_shards_split_between_processes_are_done_once(tiny, tmp_path, monkeypatch):
    from mblip.data import translate

    source = write_jsonl(tmp_path / "en.jsonl", example_rows(2))
    options = ["--languages", "de,fr,zh", "--english_share", "0.25", "--shard_size", "2", *RELAXED]
    single = make_translator(tiny, RecordingTranslator)
    run_mix(source, tmp_path / "one", single, *options)

    workers = [make_translator(tiny, RecordingTranslator) for _ in range(2)]
    monkeypatch.setattr(translate, "_partial_state", lambda: FakeProcess(1, 2))
    assert run_mix(source, tmp_path / "two", workers[1], *options) is None  # not the main process: no final file
    assert not (tmp_path / "two" / "train.jsonl").exists()
    monkeypatch.setattr(translate, "_partial_state", lambda: FakeProcess(0, 2))
    run_mix(source, tmp_path / "two", workers[0], *options)
    assert (tmp_path / "two" / "train.jsonl").read_text() == (tmp_path / "one" / "train.jsonl").read_text()
    # Both did work, and together they translated exactly what one process translated: no shard twice.
    assert all(w.sentences_translated for w in workers)
    # (Templates too: the second process finds the first one's templates/<lang>.json.)
    assert sorted(workers[0].seen + workers[1].seen) == sorted(single.seen)


@pytest.mark.skipif(sys.platform == "win32", reason="gloo launcher")
def test_data_parallel_over_two_processes_equals_one(tiny_dir, tmp_path):
    """`accelerate launch` with two CPU processes: shards split between them, one merged mix, same as one process.

    With the default engine: ctranslate2 where it is installed (the split is the engine's business only in loading
    the model, and the two processes share one conversion), else transformers."""
    source = write_jsonl(tmp_path / "en.jsonl", example_rows(2))
    common = [
        "--input",
        str(source),
        "--languages",
        "de,fr,zh",
        "--english_share",
        "0.25",
        "--shard_size",
        "2",
        "--model",
        str(tiny_dir),
        "--progress",
        "false",
        *SHORT,
        *RELAXED,
    ]
    assert main(["--output", str(tmp_path / "one"), "--ctranslate2_cache_dir", str(tmp_path / "ct2-one"), *common]) == 0
    launch = [
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--multi_gpu",
        "-m",
        "mblip.data.translate",
        "--output",
        str(tmp_path / "two"),
        "--ctranslate2_cache_dir",
        str(tmp_path / "ct2-two"),
        *common,
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, *launch], cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "to do on 2 process(es)" in result.stderr
    assert (tmp_path / "two" / "train.jsonl").read_text() == (tmp_path / "one" / "train.jsonl").read_text()
    markers = [json.loads(p.read_text()) for p in (tmp_path / "two" / "shards").glob("*.done.json")]
    assert len(markers) == len(list((tmp_path / "one" / "shards").glob("*.done.json")))
    engine = json.loads((tmp_path / "two" / "report.json").read_text())["engine"]
    assert engine == ("transformers" if ctranslate2 is None else "ctranslate2")
    if ctranslate2 is not None:  # converted once, by whichever process took the lock first
        assert len([p for p in (tmp_path / "ct2-two").iterdir() if (p / "model.bin").is_file()]) == 1


# ---- the CTranslate2 engine -----------------------------------------------------------------------------------------

try:
    import ctranslate2
except ImportError:  # a requirement; without it, only these tests are skipped
    ctranslate2 = None
needs_ctranslate2 = pytest.mark.skipif(ctranslate2 is None, reason="ctranslate2 is not installed")


def save_tiny(path, eos_scale=1.0, seed=0):
    """A tiny model saved for conversion; eos_scale > 1 makes the random decoder end some sentences by itself."""
    model, tokenizer = build_tiny_nllb(seed=seed)
    with torch.no_grad():
        model.get_input_embeddings().weight[tokenizer.eos_token_id] *= eos_scale
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


@pytest.mark.parametrize("eos_scale", [1.0, 4.0], ids=["runs-to-budget", "ends-by-itself"])
@needs_ctranslate2
def test_ctranslate2_engine_gives_the_transformers_engines_outputs(tmp_path, eos_scale):
    from mblip.data.translate import CTranslate2Translator

    model, tokenizer = save_tiny(tmp_path / "model", eos_scale)
    options = {"batch_size": 4, "max_len_a": 1.0, "max_len_b": 4, "show_progress": False}
    reference = Translator(model, tokenizer, **options)
    engine = CTranslate2Translator.from_pretrained(
        tmp_path / "model", compute_type="float32", cache_dir=tmp_path / "cache", **options
    )
    assert engine.engine == "ctranslate2" and engine.device == torch.device("cpu")
    texts = [" ".join(CORPUS[i : i + k]) for k in (1, 3, 2) for i in range(0, 12, 2)] + list(CORPUS)
    for language in ("de", "zh"):
        expected = reference.translate(texts, language)
        assert engine.translate(texts, language) == expected  # text and status, sentence by sentence
    statuses = {t.status for t in expected}
    # Both ways a translation ends are covered: by its budget (truncated), and by the model's own EOS (ok).
    assert statuses == ({"truncated"} if eos_scale == 1.0 else {"truncated", "ok"})
    assert engine.generate_calls == reference.generate_calls == 2 * 8  # 31 unique sentences in batches of 4, twice


@needs_ctranslate2
@pytest.mark.parametrize("beams", [1, 2], ids=["greedy", "beam"])
def test_ctranslate2_decodes_no_further_than_the_budgets_need(tmp_path, beams):
    """A batch decodes to its longest budget; greedy search stops one token short, at the token the budget allows
    only as EOS (a sentence that gets there is truncated whatever it is), and still gives the transformers engine's
    outputs. Beam search decodes that token too, as generate does, to rank its hypotheses."""
    from mblip.data.translate import CTranslate2Translator

    model, tokenizer = save_tiny(tmp_path / "model")  # runs every sentence to its budget
    texts = ["A dog.", "Two people ride bicycles down a busy street.", "What color is the bus?"]
    options = {"num_beams": beams, "show_progress": False}
    engine = CTranslate2Translator.from_pretrained(
        tmp_path / "model", compute_type="float32", cache_dir=tmp_path / "cache", **options
    )
    decode, produced = engine.model.translate_batch, []

    def recording(*args, **kwargs):
        results = decode(*args, **kwargs)
        produced.extend(len(result.hypotheses[0]) for result in results)
        return results

    engine.model = type("Recorder", (), {"translate_batch": staticmethod(recording)})()
    outputs = engine.translate(texts, "de")
    assert {t.status for t in outputs} == {"truncated"}
    if beams == 1:
        assert outputs == Translator(model, tokenizer, **options).translate(texts, "de")
    caps = engine.budgets([len(ids) for ids in tokenizer(texts)["input_ids"]])
    assert len(set(caps)) == 3
    # Hypotheses count the target-language token.
    assert produced == [max(caps) - 1 if beams == 1 else max(caps)] * 3


@needs_ctranslate2
def test_ctranslate2_conversion_is_cached_and_redone_for_a_changed_model(tmp_path, monkeypatch, caplog):
    from ctranslate2.converters import TransformersConverter

    from mblip.data.translate import ctranslate2_model

    conversions = []
    convert = TransformersConverter.convert

    def counting(self, output_dir, *args, **kwargs):
        conversions.append(output_dir)
        return convert(self, output_dir, *args, **kwargs)

    monkeypatch.setattr(TransformersConverter, "convert", counting)
    save_tiny(tmp_path / "model")
    first = ctranslate2_model(tmp_path / "model", tmp_path / "cache")
    assert len(conversions) == 1 and (first / "model.bin").is_file()
    source = json.loads((first / "mblip_source.json").read_text())
    assert source["fingerprint"].startswith("sha256:") and source["ctranslate2"] == ctranslate2.__version__
    with caplog.at_level(logging.INFO, logger="mblip.data.translate"):
        assert ctranslate2_model(tmp_path / "model", tmp_path / "cache") == first
    assert len(conversions) == 1 and "Using the CTranslate2 copy" in caplog.text  # reused, not converted again
    save_tiny(tmp_path / "model", seed=1)  # the same folder with other weights
    second = ctranslate2_model(tmp_path / "model", tmp_path / "cache")
    assert len(conversions) == 2 and second != first and (second / "model.bin").is_file()
    assert not list((tmp_path / "cache").glob(".*.tmp"))  # converted aside, then renamed into place


@needs_ctranslate2
def test_ctranslate2_errors_name_what_this_machine_can_run(tmp_path, monkeypatch):
    from mblip.data import translate
    from mblip.data.translate import CT2_COMPUTE_TYPES, CTranslate2Translator, check_compute_type

    supported = sorted(ctranslate2.get_supported_compute_types("cpu"))
    unsupported = [c for c in CT2_COMPUTE_TYPES if c not in supported]
    if unsupported:
        with pytest.raises(ValueError, match=f"cannot run on cpu here; CTranslate2 supports: {', '.join(supported)}"):
            CTranslate2Translator.from_pretrained(tmp_path / "never-read", compute_type=unsupported[0])
    if ctranslate2.get_cuda_device_count() == 0:
        with pytest.raises(ValueError, match=f"sees no CUDA device.*on cpu it supports: {', '.join(supported)}"):
            check_compute_type("cuda", "float16")
    # The arguments: a compute type without the engine, an unknown one, an unknown engine.
    with pytest.raises(ValueError, match="--compute_type is a CTranslate2 setting, but the engine is transformers"):
        parse_args(["--input", "x", "--output", "y", "--engine", "transformers", "--compute_type", "int8"])
    with pytest.raises(ValueError, match="--compute_type must be one of float32, int8, .*got 'fp8'"):
        parse_args(["--input", "x", "--output", "y", "--engine", "ctranslate2", "--compute_type", "fp8"])
    with pytest.raises(ValueError, match="--engine must be one of auto, transformers, ctranslate2"):
        parse_args(["--input", "x", "--output", "y", "--engine", "vllm"])
    # auto: ctranslate2 when installed, else transformers; asked for without it: how to get it.
    assert parse_args(["--input", "x", "--output", "y"])[2].engine == "ctranslate2"
    monkeypatch.setattr(translate, "ctranslate2_available", lambda: False)
    assert parse_args(["--input", "x", "--output", "y"])[2].engine == "transformers"
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # what an import without the package raises
    with pytest.raises(
        ValueError, match=r"--engine ctranslate2 needs the ctranslate2 package: pip install ctranslate2"
    ):
        parse_args(["--input", "x", "--output", "y", "--engine", "ctranslate2"])


@needs_ctranslate2
def test_a_model_ctranslate2_cannot_convert_gets_its_reason(tmp_path):
    from transformers import LEDConfig

    from mblip.data.translate import ctranslate2_model

    LEDConfig(d_model=16, encoder_layers=1, decoder_layers=1).save_pretrained(tmp_path / "led")
    with pytest.raises(
        ValueError,
        match=r"(?s)CTranslate2 cannot convert .*led: No conversion is registered for the "
        r"model configuration LEDConfig \(supported configurations are: .*M2M100Config.*--engine transformers",
    ):
        ctranslate2_model(tmp_path / "led", tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]  # nothing half-written


@needs_ctranslate2
def test_resuming_with_another_engine_or_compute_type_is_refused(tiny, tmp_path):
    source = write_jsonl(tmp_path / "en.jsonl", example_rows(1))
    out = tmp_path / "mix"
    base = ["--languages", "de", *RELAXED]
    run_mix(source, out, make_translator(tiny), *base, "--engine", "transformers")
    with pytest.raises(
        ValueError,
        match=r"(?s)other settings.*compute_type: None -> 'float32'.*engine: 'transformers' -> 'ctranslate2'",
    ):
        run_mix(source, out, make_translator(tiny), *base, "--engine", "ctranslate2")
    # A run recorded before the engine was a setting used transformers: it resumes with it.
    config = json.loads((out / "run_config.json").read_text())
    for key in ("engine", "compute_type"):
        del config["settings"][key]
    (out / "run_config.json").write_text(json.dumps(config))
    run_mix(source, out, make_translator(tiny), *base, "--engine", "transformers")

    run_mix(source, tmp_path / "ct2", make_translator(tiny), *base, "--engine", "ctranslate2")  # float32 on CPU
    settings = json.loads((tmp_path / "ct2" / "run_config.json").read_text())["settings"]
    assert (settings["engine"], settings["compute_type"]) == ("ctranslate2", "float32")
    with pytest.raises(ValueError, match=r"(?s)other settings.*compute_type: 'float32' -> 'int8'"):
        run_mix(
            source, tmp_path / "ct2", make_translator(tiny), *base, "--engine", "ctranslate2", "--compute_type", "int8"
        )
    # Where the converted models are kept does not change a translation.
    moved = ["--engine", "ctranslate2", "--ctranslate2_cache_dir", "z"]
    report = run_mix(source, tmp_path / "ct2", make_translator(tiny), *base, *moved)
    assert (report["engine"], report["compute_type"]) == ("ctranslate2", "float32")
