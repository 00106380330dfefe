"""Argument files: every command line reads flags, or one .json/.yaml file followed by flags that override it.

    accelerate launch train_mblip.py configs/recipe.yaml --max_steps 10 --output_dir runs/try

The file maps option names (the dataclass field names, as in `--name`) to values. Its values become the flags they
stand for and go through `HfArgumentParser`'s argparse actions, so a file is typed and checked exactly as a command line
is: `lora_r: abc` fails like `--lora_r abc`, `1e-4` is a float even though YAML 1.1 reads it as a string, `no` stays
the string "no" (YAML 1.2 booleans: only true/false), and a required option may come from either. Flags after the file
win, and each dataclass is built once, on the merged values, so `__post_init__` checks see the final settings. What a
flag cannot spell is taken as written: `null`, an empty list, and a mapping or list for an option whose declared
type allows one while its flag takes a single string (TrainingArguments' `report_to`, `fsdp_config`).

Usage (every script):

    from mblip.arguments import parse_args

    model_args, data_args = parse_args((ModelArguments, DataArguments), argv)

or, to keep the parser for `parser.error`, `MBlipArgumentParser(types, **kwargs).parse_command_line(argv)`. A command
whose user errors should end in a message and exit status 2 returns `run_command(lambda: ..., logger)`.
"""

import difflib
import json
import logging
import re
import sys
import typing
from argparse import Action, ArgumentDefaultsHelpFormatter, RawDescriptionHelpFormatter
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml
from transformers import HfArgumentParser


ARGUMENT_FILE_SUFFIXES = (".json", ".yaml", ".yml")


class ArgumentFileError(ValueError):
    """The argument file is missing, unreadable, or names an option that does not exist."""


class HelpFormatter(ArgumentDefaultsHelpFormatter, RawDescriptionHelpFormatter):
    """--help shows the description (a script's docstring, with its commands) as written, and every option's default."""


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans: `no`, `off`, `y` stay strings, as they would on a command line."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def is_argument_file(argument: str) -> bool:
    return not argument.startswith("-") and argument.lower().endswith(ARGUMENT_FILE_SUFFIXES)


def read_argument_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a .json/.yaml/.yml file; an empty file is an empty mapping."""
    path = Path(path)
    if not path.is_file():
        raise ArgumentFileError(f"Argument file not found: {str(path)!r}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.load(text, Loader=_Yaml12Loader)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ArgumentFileError(f"Cannot read argument file {str(path)!r}: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ArgumentFileError(
            f"Argument file {str(path)!r} must hold a mapping of option names to values, got a {type(data).__name__}"
        )
    return data


class MBlipArgumentParser(HfArgumentParser):
    """`HfArgumentParser` whose `parse_command_line` also takes one argument file first, overridden by later flags."""

    def __init__(self, dataclass_types, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(dataclass_types, **kwargs)
        # While parsing, for `error`: the argument file, the keys it set, and file names given after a flag.
        self._file_context: tuple[str | None, set[str], list[str]] = (None, set(), [])

    # ------------------------------------------------------------------------------------------------ options
    def _options(self) -> dict[str, Action]:
        """Option name (= dataclass field name) -> the action of its `--name` flag."""
        return {
            action.dest: action
            for action in self._actions
            if f"--{action.dest}" in action.option_strings and action.dest != "help"
        }

    def _field_types(self) -> dict[str, Any]:
        """Declared types, read fresh: HfArgumentParser narrows `field.type` in place while building the parser."""
        hints = {}
        for dtype in self.dataclass_types:
            if is_dataclass(dtype):
                hints.update(typing.get_type_hints(dtype))
        return hints

    def _given_on_command_line(self, argv: Sequence[str]) -> set[str]:
        """Option names the flags in `argv` set (argparse's unambiguous abbreviations included)."""
        given = set()
        for token in argv:
            if not token.startswith("--"):
                continue
            option = token.split("=", 1)[0]
            if option in self._option_string_actions:
                given.add(self._option_string_actions[option].dest)
            elif self.allow_abbrev:
                dests = {action.dest for name, action in self._option_string_actions.items() if name.startswith(option)}
                if len(dests) == 1:
                    given |= dests
        return given

    # ------------------------------------------------------------------------------------------------ file -> flags
    def _file_to_flags(self, path: str, data: dict[str, Any], skip: set[str]) -> tuple[list[str], dict[str, Any]]:
        """The flags standing for the file's values, and the values no flag can spell (null, [], dict, list)."""
        options = self._options()
        hints = self._field_types()
        flags, literal = [], {}
        for raw_key, value in data.items():
            key = str(raw_key).replace("-", "_")
            if key not in options:
                close = difflib.get_close_matches(key, list(options), n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise ArgumentFileError(
                    f"Unknown key {raw_key!r} in argument file {path!r}.{hint} Valid keys: {', '.join(sorted(options))}"
                )
            if key in skip:  # the command line sets it; its value wins and the file's is never parsed
                continue
            action = options[key]
            many = action.nargs in ("+", "*")
            if value is None or (many and value == []):
                if action.required:
                    raise ArgumentFileError(f"{path!r} sets {key}: {value!r}, but --{key} is required")
                literal[key] = value
            elif isinstance(value, dict):
                if dict not in _leaf_types(hints.get(key)):
                    raise ArgumentFileError(f"{path!r} sets {key} to a mapping, but --{key} does not take one")
                literal[key] = value
            elif isinstance(value, list) and not many:
                if list not in _leaf_types(hints.get(key)):
                    raise ArgumentFileError(f"{path!r} sets {key} to a list, but --{key} takes one value")
                literal[key] = value  # e.g. TrainingArguments' `report_to: str | list[str]`
            elif isinstance(value, list):
                flags += [f"--{key}", *(_flag_value(item) for item in value)]
            else:
                flags.append(f"--{key}={_flag_value(value)}")
        return flags, literal

    @contextmanager
    def _literal_defaults(self, values: dict[str, Any]):
        """Temporarily make `values` the defaults: how a value no flag can spell reaches the dataclass."""
        saved = [(action, action.default) for action in self._actions if action.dest in values]
        try:
            for action, _ in saved:
                action.default = values[action.dest]
            yield
        finally:
            for action, default in saved:
                action.default = default

    # ------------------------------------------------------------------------------------------------ parsing
    def parse_command_line(self, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
        """One instance per dataclass type, from `argv` (default `sys.argv[1:]`): flags, or an argument file + flags."""
        argv = list(sys.argv[1:] if argv is None else argv)
        flags, literal, path, keys = argv, {}, None, set()
        if argv and is_argument_file(argv[0]):
            path, argv = argv[0], argv[1:]
            data = read_argument_file(path)
            file_flags, literal = self._file_to_flags(path, data, skip=self._given_on_command_line(argv))
            flags = file_flags + argv
            keys = {flag[2:].split("=", 1)[0] for flag in file_flags if flag.startswith("--")}
        self._file_context = (path, keys, [arg for arg in argv[1:] if is_argument_file(arg)])
        try:
            with self._literal_defaults(literal):
                namespace, remaining = self.parse_known_args(flags)
        finally:
            self._file_context = (None, set(), [])
        if remaining:
            raise ValueError(self._unknown_arguments_message(remaining))
        # As HfArgumentParser.parse_args_into_dataclasses: each dataclass built once, so __post_init__ sees the merge.
        outputs = []
        for dtype in self.dataclass_types:
            keys = {f.name for f in fields(dtype) if f.init}
            outputs.append(dtype(**{key: value for key, value in vars(namespace).items() if key in keys}))
        return tuple(outputs)

    def _unknown_arguments_message(self, remaining: list[str]) -> str:
        message = f"Unknown arguments: {' '.join(remaining)}."
        for token in remaining:
            if is_argument_file(token):
                message += f" An argument file ({token}) must come first, before any flag."
            elif token.startswith("--"):
                close = difflib.get_close_matches(token.split("=", 1)[0], list(self._option_string_actions), n=3)
                if close:
                    message += f" {token}: did you mean {', '.join(close)}?"
        return message

    def error(self, message: str) -> NoReturn:
        """argparse's error, naming the argument file when the bad value came from it."""
        path, keys, late_files = self._file_context
        named = [key for key in sorted(keys) if re.search(rf"--{re.escape(key)}(?![\w-])", message)]
        if named:
            message += f" (set in {path}: {', '.join(named)})"
        if late_files and "required" in message:
            message += f" (if {late_files[0]} is an argument file, it must come first, before any flag)"
        super().error(message)


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _leaf_types(annotation: Any) -> set[Any]:
    """The plain types inside `annotation`, e.g. {dict, str, NoneType} for `dict | str | None`."""
    args = typing.get_args(annotation)
    if not args:
        return {annotation}
    origin = typing.get_origin(annotation)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        return set().union(*(_leaf_types(arg) for arg in args))
    return {origin}


def parse_args(dataclass_types: Any | Iterable[Any], argv: Sequence[str] | None = None, **parser_kwargs):
    """Parse `argv` (default `sys.argv[1:]`) into one instance of each dataclass type.

    `argv` is either flags, or one .json/.yaml/.yml file followed by flags that override its values. `parser_kwargs`
    go to `HfArgumentParser` (prog, description, formatter_class: `HelpFormatter` unless given).
    """
    return MBlipArgumentParser(dataclass_types, **parser_kwargs).parse_command_line(argv)


def run_command(
    command: Callable[[], object], logger: logging.Logger, user_errors=(ValueError,), level: int = logging.INFO
) -> int:
    """A command line's exit status: 0 when `command()` (parsing included) returns, 2 (argparse's status for a bad
    command line) when it raises one of `user_errors`. Those errors (a bad option, a missing or malformed input) are
    the user's to fix: they get their message, through `logger`, not a traceback; the traceback stays available at
    debug level. Logging first goes to stderr at `level`, in the format of the toolkit's command lines."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    try:
        command()
    except user_errors as error:
        logger.error("%s", error)
        logger.debug("Traceback:", exc_info=True)
        return 2
    return 0
