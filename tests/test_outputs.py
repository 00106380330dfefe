"""The two shared owners of issue 13: resumable outputs (mblip/outputs.py) and bad-row accounting
(mblip/bad_rows.py), and that every command line spells their flags the same."""

import json
import logging
import os
import shutil

import pytest

from mblip.bad_rows import BadRows, BadRowsError, check_threshold
from mblip.hub import atomic_directory
from mblip.outputs import (
    CorruptOutput,
    ResumableJsonl,
    SettingsMismatch,
    check_settings,
    model_identity,
    read_resumable_jsonl,
)


ROWS = [{"id": 1, "text": "नमस्ते दुनिया"}, {"id": 2, "text": "zwei"}]


def lines(rows) -> bytes:
    return b"".join(json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in rows)


def killed_job(tmp_path, tail: bytes = b"", settings=None) -> ResumableJsonl:
    """A job that wrote ROWS and was killed (OUTPUT.partial stays), with `tail` as the torn end of its last write."""
    out = ResumableJsonl(tmp_path / "out.jsonl", settings or {"model": "a"})
    out.write(ROWS)
    out.close()
    with open(out.partial, "ab") as handle:
        handle.write(tail)
    return out


# ================================================================================================ reading a partial file
@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(json.dumps({"id": 3, "text": "drei"}).encode(), id="complete-row-without-newline"),
        pytest.param('{"id": 3, "text": "हिन्दी"}'.encode()[:20], id="cut-inside-a-utf8-character"),
        pytest.param(b'{"id": 3, "te', id="cut-mid-row"),
    ],
)
def test_a_torn_tail_is_dropped_with_the_file_and_offset_logged(tmp_path, caplog, tail):
    path = tmp_path / "x.jsonl"
    path.write_bytes(lines(ROWS) + tail)
    with caplog.at_level(logging.WARNING):
        rows, keep = read_resumable_jsonl(path)
    assert rows == ROWS and keep == len(lines(ROWS))
    assert f"{path}" in caplog.text and f"byte offset {keep}" in caplog.text


@pytest.mark.parametrize("bad", [b"not json\n", b'"a string"\n', '{"id": "\u0928'.encode()[:-1] + b'"}\n'])
def test_a_malformed_line_before_the_end_is_an_error_naming_file_line_and_offset(tmp_path, bad):
    path = tmp_path / "x.jsonl"
    path.write_bytes(lines(ROWS[:1]) + bad + lines(ROWS[1:]))
    offset = len(lines(ROWS[:1]))
    with pytest.raises(CorruptOutput, match=rf"{path} line 2 \(byte offset {offset}\)"):
        read_resumable_jsonl(path)


def test_check_rejects_rows_without_the_key(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(lines([{"text": "no id"}]))
    with pytest.raises(CorruptOutput, match="line 1"):
        read_resumable_jsonl(path, check=lambda row: row["id"])


# ================================================================================================ the writer
@pytest.mark.parametrize("tail", [b"", b'{"id": 3}', '{"id": 3, "text": "न'.encode()[:-1]])
def test_resume_appends_after_the_intact_rows_and_finishes_valid_jsonl(tmp_path, tail):
    killed_job(tmp_path, tail)
    out = ResumableJsonl(tmp_path / "out.jsonl", {"model": "a"})
    assert out.rows == ROWS
    out.write([{"id": 3, "text": "drei"}])
    final = out.finish()
    assert final.read_bytes() == lines([*ROWS, {"id": 3, "text": "drei"}])  # nothing glued, all UTF-8
    assert not out.partial.exists() and out.settings_path.exists()


def test_nothing_is_written_before_the_first_row_and_an_empty_job_gives_an_empty_file(tmp_path):
    out = ResumableJsonl(tmp_path / "sub" / "out.jsonl", {"model": "a"})
    out.close()
    assert not (tmp_path / "sub").exists()
    assert out.finish().read_bytes() == b""


def test_a_partial_file_of_other_settings_is_refused_naming_the_differences(tmp_path):
    killed_job(tmp_path, settings={"model_identity": "sha256:aa", "generation": {"num_beams": 5}})
    with pytest.raises(SettingsMismatch) as error:
        ResumableJsonl(tmp_path / "out.jsonl", {"model_identity": "sha256:bb", "generation": {"num_beams": 1}})
    message = str(error.value)
    assert str(tmp_path / "out.jsonl.partial") in message and "--overwrite to start over" in message
    assert "generation.num_beams: 5 -> 1" in message and "model_identity: 'sha256:aa' -> 'sha256:bb'" in message
    # --overwrite starts over.
    out = ResumableJsonl(tmp_path / "out.jsonl", {"model_identity": "sha256:bb"}, overwrite=True)
    assert out.rows == [] and not out.partial.exists() and not out.settings_path.exists()


def test_a_partial_file_without_a_settings_record_is_refused(tmp_path):
    (tmp_path / "out.jsonl.partial").write_bytes(lines(ROWS))
    with pytest.raises(SettingsMismatch, match="no record of the settings.*--overwrite"):
        ResumableJsonl(tmp_path / "out.jsonl", {"model": "a"})


def test_a_finished_output_is_kept_unless_reopened_or_overwritten(tmp_path):
    out = killed_job(tmp_path)
    out.finish()
    with pytest.raises(FileExistsError, match="--overwrite"):
        ResumableJsonl(tmp_path / "out.jsonl", {"model": "a"})
    reopened = ResumableJsonl(tmp_path / "out.jsonl", {"model": "a"}, reopen=True)
    assert reopened.rows == ROWS
    reopened.write([{"id": 3}])
    assert [row["id"] for row in read_resumable_jsonl(reopened.finish())[0]] == [1, 2, 3]


def test_check_settings_fills_what_an_older_record_lacks(tmp_path):
    path = tmp_path / "run_config.json"
    path.write_text(json.dumps({"settings": {"seed": 1}}))
    check_settings(
        path,
        {"settings": {"seed": 1, "engine": "transformers"}},
        what="run",
        defaults={"settings.engine": "transformers"},
    )
    with pytest.raises(SettingsMismatch, match="settings.engine: 'transformers' -> 'ctranslate2'"):
        check_settings(
            path,
            {"settings": {"seed": 1, "engine": "ctranslate2"}},
            what="run",
            defaults={"settings.engine": "transformers"},
        )


def test_model_identity_follows_config_and_weights_not_the_path(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 32}')
    (model / "model.safetensors").write_bytes(b"\0" * 64)
    first = model_identity(model)
    assert first.startswith("sha256:") and model_identity(model) == first
    shutil.copytree(model, tmp_path / "moved")  # keeps modification times, as mv and cp -p do
    assert model_identity(tmp_path / "moved") == first
    (model / "README.md").write_text("# The card, rewritten by python -m eval --update_card\n")
    assert model_identity(model) == first
    (model / "config.json").write_text('{"hidden_size": 64}')
    second = model_identity(model)
    assert second != first
    weights = model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # rewritten in place
    assert model_identity(model) != second
    assert model_identity("org/no-such-model").startswith("hub:org/no-such-model")


# ================================================================================================ hub temporaries
def test_atomic_directory_removes_what_a_killed_run_left(tmp_path, caplog):
    stale = tmp_path / ".out.incomplete-4194999-abcd"  # a pid above Linux's pid_max: never running
    stale.mkdir()
    (stale / "weights.bin").write_bytes(b"\0" * 10)
    with caplog.at_level(logging.WARNING), atomic_directory(tmp_path / "out") as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert f"Removed {stale}" in caplog.text


# ================================================================================================ bad rows
def test_bad_rows_counts_reasons_keeps_examples_and_checks_the_threshold():
    bad = BadRows(total=10, noun="images", state="unreadable", max_examples=2)
    bad.add("truncated", "a.jpg", "cut at byte 10")
    bad.add("truncated", "b.jpg")
    bad.add("not an image", "c.txt", count=2)
    assert bad.count == len(bad) == 4 and bad.fraction == pytest.approx(0.4)
    assert bad.to_dict() == {
        "total": 10,
        "count": 4,
        "fraction": 0.4,
        "by_reason": {"truncated": 2, "not an image": 2},
        "examples": [
            {"row": "a.jpg", "reason": "truncated", "excerpt": "cut at byte 10"},
            {"row": "b.jpg", "reason": "truncated", "excerpt": ""},
        ],
    }
    bad.check(0.4)  # at the threshold: fine
    with pytest.raises(BadRowsError, match=r"4 of 10 images \(40.0%\) are unreadable, more than --max_bad_rows=0.3"):
        bad.check(0.3)
    assert BadRows().fraction == 0.0
    with pytest.raises(ValueError, match=r"--max_bad_rows is a fraction in \[0, 1\], got 1.5"):
        check_threshold(1.5)


# ================================================================================================ one flag name
def command_lines():
    from mblip.data.translate import DataArguments
    from mblip.evaluation.run import EvalArguments
    from mblip.predict import PredictArguments

    return {"predict": PredictArguments, "eval": EvalArguments, "data.translate": DataArguments}


@pytest.mark.parametrize("script", ["predict", "eval", "data.translate"])
def test_every_command_line_spells_the_threshold_and_overwrite_flags_the_same(script):
    from dataclasses import fields

    from transformers import HfArgumentParser

    dataclass_type = command_lines()[script]
    names = {f.name for f in fields(dataclass_type)}
    assert {"max_bad_rows", "overwrite"} <= names
    assert not names & {"max_unreadable_fraction", "max_skipped_fraction", "overwrite_output", "overwrite_output_dir"}
    parser = HfArgumentParser(dataclass_type)
    options = parser._option_string_actions
    assert options["--max_bad_rows"].dest == "max_bad_rows" and options["--overwrite"].dest == "overwrite"
    # The names before 0.3 still parse, as deprecated aliases of the same options.
    aliases = {
        "predict": ["--max_unreadable_fraction"],
        "eval": ["--max_skipped_fraction", "--overwrite_output"],
        "data.translate": ["--overwrite_output_dir"],
    }[script]
    assert all(options[alias].dest in ("max_bad_rows", "overwrite") for alias in aliases)
