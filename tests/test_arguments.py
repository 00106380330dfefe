"""mblip/arguments.py: flags, or one .json/.yaml file followed by flags that override it, for every command line."""

import dataclasses
import enum
import json
import re
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from mblip import training
from mblip.app import AppArguments
from mblip.arguments import ArgumentFileError, MBlipArgumentParser, parse_args
from mblip.bench.__main__ import BenchArguments
from mblip.convert import ConvertArguments
from mblip.data import translate
from mblip.data.filters import FilterConfig
from mblip.demo.realign import DemoArguments
from mblip.evaluation import run as evaluation
from mblip.predict import PredictArguments


ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Command:
    name: str
    types: tuple
    values: dict  # a valid set of options, as an argument file would hold them
    int_key: str  # an int option, for override and type checks
    required: tuple = ()  # options argparse requires (no default)


COMMANDS = [
    Command(
        "train_mblip.py",
        (training.ModelArguments, training.DataArguments, training.MBlipTrainingArguments),
        {"model_name_or_path": "m", "train_file": "train.jsonl", "output_dir": "out", "lora_r": 4},
        "lora_r",
    ),
    Command("predict.py", (PredictArguments,), {"model": "m", "images": ["a.jpg", "b.jpg"]}, "batch_size"),
    Command(
        "python -m eval",
        (evaluation.ModelArguments, evaluation.EvalArguments),
        {"model": "m", "task": "xgqa", "data_dir": "d", "image_dir": "i", "languages": "de,ru"},
        "batch_size",
        ("model", "task", "data_dir", "image_dir"),
    ),
    Command("app.py", (AppArguments,), {"model": "m", "port": 7000}, "port"),
    Command("convert_mblip.py", (ConvertArguments,), {"output_dir": "o", "from_blip2": "x"}, "seed", ("output_dir",)),
    Command(
        "python -m mblip.data.translate",
        (
            translate.DataArguments,
            translate.LanguageArguments,
            translate.TranslationArguments,
            FilterConfig,
        ),
        {"input": "en.jsonl", "output": "mix", "languages": "de,fr", "progress": False},
        "batch_size",
        ("input", "output"),
    ),
    Command("python -m mblip.bench", (BenchArguments,), {"only": ["inference"], "batch_sizes": [1, 4]}, "repeats"),
    Command("python -m mblip.demo.realign", (DemoArguments,), {"output_dir": "o", "quick": True}, "seed"),
]
IDS = [command.name for command in COMMANDS]


def write(path: Path, values: dict) -> str:
    if path.suffix == ".json":
        path.write_text(json.dumps(values), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return str(path)


def merged(instances) -> dict:
    out = {}
    for instance in instances:
        out.update({f.name: getattr(instance, f.name) for f in dataclasses.fields(instance) if f.init})
    return out


def as_flags(values: dict) -> list[str]:
    argv = []
    for key, value in values.items():
        items = value if isinstance(value, list) else [value]
        argv += [f"--{key}", *(str(item).lower() if isinstance(item, bool) else str(item) for item in items)]
    return argv


# ================================================================================================ every command line
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_file_only_gives_the_same_result_as_the_flags(command, suffix, tmp_path):
    from_file = merged(parse_args(command.types, [write(tmp_path / f"args{suffix}", command.values)]))
    from_flags = merged(parse_args(command.types, as_flags(command.values)))
    for key, value in command.values.items():
        assert from_file[key] == value and type(from_file[key]) is type(value), key
    # Everything else too (defaults, __post_init__ results); TrainingArguments' run-dependent fields aside.
    unstable = {"logging_dir", "output_dir"}
    assert {k: v for k, v in from_file.items() if k not in unstable} == {
        k: v for k, v in from_flags.items() if k not in unstable
    }


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_flags_after_the_file_override_it(command, tmp_path):
    path = write(tmp_path / "args.yaml", {**command.values, command.int_key: 3})
    assert merged(parse_args(command.types, [path]))[command.int_key] == 3
    values = merged(parse_args(command.types, [path, f"--{command.int_key}", "5"]))
    assert values[command.int_key] == 5
    for key, value in command.values.items():  # the rest still comes from the file
        if key != command.int_key:
            assert values[key] == value, key
    # The file's value is never parsed when the command line replaces it: a bad one there is not an error.
    path = write(tmp_path / "bad.yaml", {**command.values, command.int_key: "abc"})
    assert merged(parse_args(command.types, [path, f"--{command.int_key}=6"]))[command.int_key] == 6


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_flags_only(command):
    values = merged(parse_args(command.types, [*as_flags(command.values), f"--{command.int_key}", "2"]))
    assert values[command.int_key] == 2
    assert all(values[key] == value for key, value in command.values.items() if key != command.int_key)


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_an_unknown_key_names_itself_the_file_and_the_valid_keys(command, tmp_path):
    typo = command.int_key + "s"  # e.g. lora_rs
    path = write(tmp_path / "args.yaml", {**command.values, typo: 1})
    with pytest.raises(ArgumentFileError) as error:
        parse_args(command.types, [path])
    message = str(error.value)
    assert f"Unknown key '{typo}'" in message and path in message
    assert f"Did you mean {command.int_key}" in message
    valid = message.split("Valid keys: ")[1].split(", ")
    names = {f.name for dtype in command.types for f in dataclasses.fields(dtype) if f.init}
    assert set(valid) == names


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_a_wrong_type_in_the_file_fails_as_the_flag_would(command, tmp_path, capsys):
    path = write(tmp_path / "args.yaml", {**command.values, command.int_key: "abc"})
    with pytest.raises(SystemExit) as exit_info:
        parse_args(command.types, [path])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(rf"argument --{command.int_key}\b.*: invalid int value: 'abc'", err)
    assert f"(set in {path}: {command.int_key})" in err
    with pytest.raises(SystemExit):
        parse_args(command.types, [*as_flags(command.values), f"--{command.int_key}", "abc"])
    assert "invalid int value: 'abc'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.required], ids=[c.name for c in COMMANDS if c.required])
def test_a_required_option_may_come_from_the_file_or_the_command_line(command, tmp_path, capsys):
    first, *_ = command.required
    values = merged(parse_args(command.types, [write(tmp_path / "all.yaml", command.values)]))
    assert values[first] == command.values[first]
    rest = {k: v for k, v in command.values.items() if k != first}
    path = write(tmp_path / "rest.yaml", rest)
    values = merged(parse_args(command.types, [path, f"--{first}", str(command.values[first])]))
    assert values[first] == command.values[first]
    with pytest.raises(SystemExit):
        parse_args(command.types, [path])
    assert "the following arguments are required" in capsys.readouterr().err


@pytest.mark.parametrize("with_file", [False, True])
@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_help_lists_every_option(command, with_file, tmp_path, capsys):
    argv = [write(tmp_path / "args.yaml", command.values)] if with_file else []
    with pytest.raises(SystemExit) as exit_info:
        parse_args(command.types, [*argv, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for dtype in command.types:
        for f in dataclasses.fields(dtype):
            if f.init:
                assert f"--{f.name}" in out, f.name


def test_a_missing_file_is_an_error_naming_it(tmp_path):
    missing = str(tmp_path / "recipe.yaml")
    for command in COMMANDS:
        with pytest.raises(ArgumentFileError, match=re.escape(f"Argument file not found: '{missing}'")):
            parse_args(command.types, [missing, "--seed", "1"])


def test_no_other_module_reads_argument_files_or_builds_its_own_parser():
    """One owner: every command line goes through mblip/arguments.py."""
    offenders = []
    for path in sorted((ROOT / "mblip").rglob("*.py")):
        if path.name == "arguments.py":
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"HfArgumentParser\(|parse_(json|yaml)_file|parse_args_into_dataclasses", text):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


# ================================================================================================ typing, like flags
class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


CALLS = []


@dataclass
class Example:
    name: str = field(metadata={"help": "Required."})
    steps: int = 1
    rate: float = 0.1
    flag: bool = False
    on_by_default: bool = True
    maybe: int | None = None
    maybe_text: str | None = "set"
    color: Color = Color.RED
    mode: typing.Literal["no", "yes", "auto"] = "auto"
    words: list[str] = field(default_factory=lambda: ["a"])
    numbers: list[int] | None = None
    mapping: dict | str | None = None

    def __post_init__(self):
        CALLS.append((self.steps, self.flag))
        if self.steps > 100 and not self.flag:
            raise ValueError(f"--steps above 100 needs --flag, got steps={self.steps}")


def test_file_values_are_typed_like_flags(tmp_path):
    path = tmp_path / "args.yaml"
    path.write_text(
        "name: run\n"
        "steps: '7'\n"  # a string in the file is converted exactly as the flag would be
        "rate: 1e-4\n"  # YAML 1.1 reads this as a string; --rate 1e-4 is a float
        "flag: yes\n"  # YAML 1.2 booleans only: 'yes' reaches the flag's string_to_bool
        "on_by_default: false\n"
        "maybe: 3\n"
        "maybe_text: null\n"  # what no flag can spell is taken as written
        "color: blue\n"
        "mode: no\n"  # stays the string "no", a valid choice (YAML 1.1 would make it False)
        "words: [x, y]\n"
        "numbers: ['1', 2]\n"
        "mapping: {a: 1}\n",
        encoding="utf-8",
    )
    (args,) = parse_args(Example, [str(path)])
    assert args == Example(
        name="run",
        steps=7,
        rate=1e-4,
        flag=True,
        on_by_default=False,
        maybe=3,
        maybe_text=None,
        color="blue",  # what --color blue gives: HfArgumentParser checks the choice, the dataclass converts (if ever)
        mode="no",
        words=["x", "y"],
        numbers=[1, 2],
        mapping={"a": 1},
    )
    flags = "--name run --steps 7 --rate 1e-4 --flag yes --on_by_default false --maybe 3 --color blue --mode no"
    (from_flags,) = parse_args(Example, [*flags.split(), "--words", "x", "y", "--numbers", "1", "2"])
    assert dataclasses.replace(from_flags, maybe_text=None, mapping={"a": 1}) == args
    (args,) = parse_args(Example, [str(path), "--on_by_default", "--maybe_text", "back", "--words", "z"])
    assert args.on_by_default is True and args.maybe_text == "back" and args.words == ["z"]


@pytest.mark.parametrize(
    "line, message",
    [
        ("rate: fast", "argument --rate: invalid float value: 'fast'"),
        ("flag: maybe", "argument --flag: Truthy value expected"),
        ("color: green", "argument --color: invalid choice: 'green'"),
        ("numbers: [1, two]", "argument --numbers: invalid int value: 'two'"),
    ],
)
def test_invalid_file_values_fail_as_flags_do(line, message, tmp_path, capsys):
    path = tmp_path / "args.yaml"
    path.write_text(f"name: run\n{line}\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        parse_args(Example, [str(path)])
    err = capsys.readouterr().err
    assert message.lower() in err.lower() and str(path) in err


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: run\nsteps: [1, 2]\n", "sets steps to a list, but --steps takes one value"),
        ("name: run\nwords: {a: 1}\n", "sets words to a mapping, but --words does not take one"),
        ("name: null\n", "sets name: None, but --name is required"),
        ("- name\n", "must hold a mapping of option names to values, got a list"),
        ("name: [unclosed\n", "Cannot read argument file"),
    ],
)
def test_file_shape_errors_name_the_file(text, message, tmp_path):
    path = tmp_path / "args.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ArgumentFileError, match=re.escape(message)) as error:
        parse_args(Example, [str(path)])
    assert str(path) in str(error.value)


def test_post_init_runs_once_on_the_merged_values(tmp_path):
    path = tmp_path / "args.yaml"
    path.write_text("name: run\nsteps: 500\n", encoding="utf-8")
    CALLS.clear()
    with pytest.raises(ValueError, match="needs --flag, got steps=500"):
        parse_args(Example, [str(path)])
    CALLS.clear()
    (args,) = parse_args(Example, [str(path), "--flag"])  # the file alone is invalid; the merge is not
    assert args.steps == 500 and args.flag and CALLS == [(500, True)]
    CALLS.clear()
    (args,) = parse_args(Example, [str(path), "--steps", "5"])
    assert CALLS == [(5, False)]


def test_flags_before_the_file_and_unknown_flags_say_what_is_wrong(tmp_path, capsys):
    path = str(tmp_path / "args.yaml")
    Path(path).write_text("name: run\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"An argument file ({path}) must come first")):
        parse_args(Example, ["--name", "x", "--steps", "2", path])
    with pytest.raises(SystemExit):  # argparse's required check comes first; its message gets the hint
        parse_args(Example, ["--steps", "2", path])
    err = capsys.readouterr().err
    assert "required: --name" in err and f"if {path} is an argument file, it must come first" in err
    with pytest.raises(ValueError, match="--stepz: did you mean --steps"):
        parse_args(Example, [path, "--stepz", "2"])


def test_keys_may_be_spelled_with_dashes_like_flags(tmp_path):
    path = tmp_path / "args.yaml"
    path.write_text("name: run\non-by-default: false\n", encoding="utf-8")
    (args,) = parse_args(Example, [str(path)])
    assert args.on_by_default is False


def test_the_parser_object_is_reusable(tmp_path):
    """Values no flag can spell are defaults only for the parse that read them."""
    parser = MBlipArgumentParser(Example)
    path = tmp_path / "args.yaml"
    path.write_text("name: run\nmaybe_text: null\n", encoding="utf-8")
    assert parser.parse_command_line([str(path)])[0].maybe_text is None
    assert parser.parse_command_line(["--name", "x"])[0].maybe_text == "set"


# ================================================================================================ the real scripts
def test_train_mblip_takes_a_recipe_file_plus_overrides(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "vision_model_name_or_path: Salesforce/blip2-flan-t5-xl\n"
        "language_model_name_or_path: bigscience/mt0-xl\n"
        f"train_file: {tmp_path / 'train.jsonl'}\n"
        f"output_dir: {tmp_path / 'run'}\n"
        "learning_rate: 5e-5\n"
        "load_in_8bit: true\n"
        "lora_r: 8\n"
        "save_strategy: no\n"
        "report_to: []\n",
        encoding="utf-8",
    )
    model_args, data_args, training_args = training.parse_args(
        [str(recipe), "--max_steps", "1", "--lora_r", "2", "--output_dir", str(tmp_path / "other")]
    )
    assert training_args.max_steps == 1 and model_args.lora_r == 2 and model_args.load_in_8bit
    assert training_args.learning_rate == 5e-5 and training_args.save_strategy.value == "no"
    assert training_args.output_dir == str(tmp_path / "other") and data_args.train_file.endswith("train.jsonl")
    assert training_args.report_to == []
    # The merged values meet __post_init__: the file's 8-bit plus --load_in_4bit is the usual error.
    with pytest.raises(ValueError, match="Choose one of --load_in_8bit and --load_in_4bit"):
        training.parse_args([str(recipe), "--load_in_4bit"])
    # Through the real entry point, in a fresh process (the old parser read a file only when it was alone).
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_mblip.py"), str(recipe), "--max_steps", "1", "--load_in_4bit"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode != 0
    assert "Choose one of --load_in_8bit and --load_in_4bit" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("module", ["mblip.predict", "mblip.app", "mblip.convert", "mblip.bench.__main__"])
def test_scripts_report_a_bad_argument_file_cleanly(module, tmp_path, capsys):
    import importlib

    main = importlib.import_module(module).main
    path = tmp_path / "args.yaml"
    path.write_text("modle: x\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main([str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Unknown key 'modle'" in err and str(path) in err


def test_translate_reports_a_bad_argument_file_cleanly(tmp_path, caplog):
    path = tmp_path / "mix.yaml"
    path.write_text("input: en.jsonl\noutput: mix\nlanguage: de\n", encoding="utf-8")
    assert translate.main([str(path)]) == 2
    assert "Unknown key 'language'" in caplog.text and "Did you mean languages" in caplog.text
