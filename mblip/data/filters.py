"""Quality filters for machine translations: pure functions on strings, and the counts that go into the report.

Each translated field of an example is checked against its English source; the first failing check names the
reason the example is dropped:

- ``source_too_long``: the source exceeded the model's input budget and was not translated;
- ``empty``: nothing left after stripping;
- ``too_long``: the translation hit its token budget (a runaway generation) or is far longer than the source;
- ``copy``: the translation is the source again (untranslated), for sources of a few words or more;
- ``repetition``: an n-gram loop ("a dog a dog a dog a dog") that the source does not have;
- ``wrong_language``: language identification (``languages.is_language``) says another language;
- ``no_template``: every prompt template of the task lost its translation in this language (reported, not patched).

Language identification cannot judge every text: texts too short to tell are counted as unchecked, never as verified.
The report names the identifier that judged (``languages.LANGID_IDENTIFIER``), so that drop rates measured with
different identifiers are not compared unawares.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from .languages import (
    LANGID_IDENTIFIER,
    LANGID_MATCH,
    LANGID_MISMATCH,
    LANGID_SHORT,
    LANGID_UNSUPPORTED,
    language_check,
)


logger = logging.getLogger(__name__)

REASONS = ("source_too_long", "empty", "too_long", "copy", "repetition", "wrong_language", "no_template")
LANGID_STATUSES = (LANGID_MATCH, LANGID_UNSUPPORTED, LANGID_SHORT)


@dataclass(frozen=True)
class FilterConfig:
    """The filters' settings; also the filter options of `python -m mblip.data.translate` (same names as flags)."""

    max_length_ratio: float = field(
        default=3.0, metadata={"help": "Drop translations longer than ratio * source characters + slack."}
    )
    # Short sources translate to longer words.
    length_slack: int = field(default=20, metadata={"help": "Characters allowed beyond the ratio."})
    short_length_slack: int = field(default=8, metadata={"help": "The same for short answers (VQA, class names)."})
    max_chars: int = field(default=4000, metadata={"help": "Drop translations longer than this."})
    drop_truncated: bool = field(default=True, metadata={"help": "Drop translations that used up their token budget."})
    # Single words and names ("Frisbee", "2") may legitimately stay the same.
    copy_min_words: int = field(
        default=3, metadata={"help": "Sources of this many words must not come back unchanged."}
    )
    repetition_max_ngram: int = field(default=4, metadata={"help": "Longest n-gram checked for loops."})
    repetition_min_repeats: int = field(default=4, metadata={"help": "Consecutive repeats that make a loop."})
    check_language: bool = field(
        default=True, metadata={"help": "Drop translations language identification puts in another language."}
    )
    langid_min_chars: int = field(default=20, metadata={"help": "Shorter texts are reported as unchecked."})

    def __post_init__(self):
        if self.max_length_ratio <= 0:
            raise ValueError(f"--max_length_ratio must be > 0, got {self.max_length_ratio}.")
        if self.repetition_max_ngram < 1 or self.repetition_min_repeats < 2:
            raise ValueError(
                f"--repetition_max_ngram must be >= 1 and --repetition_min_repeats >= 2, got "
                f"{self.repetition_max_ngram} and {self.repetition_min_repeats}."
            )


def is_empty(output: str) -> bool:
    return not output or not output.strip()


def is_too_long(source: str, output: str, max_ratio: float = 3.0, slack: int = 20, max_chars: int = 4000) -> bool:
    return len(output) > max_chars or len(output) > max_ratio * len(source) + slack


_PUNCT_SPACE = re.compile(r"[\W_]+", re.UNICODE)


def _normalize(text: str) -> str:
    return _PUNCT_SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def is_copy(source: str, output: str, min_words: int = 3) -> bool:
    """The output equals the source up to case, punctuation and spacing, for sources of ``min_words`` words or more."""
    normalized = _normalize(source)
    return len(normalized.split()) >= min_words and _normalize(output) == normalized


def _units(text: str) -> list[str]:
    """Words, or characters for text written without spaces (Chinese, Japanese, Thai...)."""
    words = text.split()
    if words and len(text) / len(words) > 10:
        return [c for c in text if c.isalpha()]
    return words


def has_repetition_loop(text: str, max_ngram: int = 4, min_repeats: int = 4) -> bool:
    """Whether some n-gram (n <= ``max_ngram``) occurs ``min_repeats`` times in a row: a decoder stuck in a loop."""
    units = _units(text)
    for n in range(1, max_ngram + 1):
        span = n * min_repeats
        for start in range(len(units) - span + 1):
            gram = units[start : start + n]
            if all(units[start + k * n : start + (k + 1) * n] == gram for k in range(1, min_repeats)):
                return True
    return False


def introduces_repetition(source: str, output: str, max_ngram: int = 4, min_repeats: int = 4) -> bool:
    """A loop in the output that the source does not have ("ha ha ha ha" may be faithful)."""
    return has_repetition_loop(output, max_ngram, min_repeats) and not has_repetition_loop(
        source, max_ngram, min_repeats
    )


@dataclass(frozen=True)
class Verdict:
    reason: str | None  # None: kept
    langid: str | None  # verified / unchecked_unsupported / unchecked_short; None when not looked at


def check_translation(
    source: str,
    output: str | None,
    language: str,
    config: FilterConfig = FilterConfig(),
    *,
    short: bool = False,
    status: str = "ok",
) -> Verdict:
    """Run the filters on one translated field. ``status`` comes from the translator (ok / truncated / source_too_long)."""
    if status == "source_too_long" or output is None:
        return Verdict("source_too_long", None)
    if is_empty(output):
        return Verdict("empty", None)
    slack = config.short_length_slack if short else config.length_slack
    if (status == "truncated" and config.drop_truncated) or is_too_long(
        source, output, config.max_length_ratio, slack, config.max_chars
    ):
        return Verdict("too_long", None)
    if is_copy(source, output, config.copy_min_words):
        return Verdict("copy", None)
    if introduces_repetition(source, output, config.repetition_max_ngram, config.repetition_min_repeats):
        return Verdict("repetition", None)
    if not config.check_language:
        return Verdict(None, None)
    langid = language_check(output, language, config.langid_min_chars)
    if langid == LANGID_MISMATCH:
        return Verdict("wrong_language", None)
    return Verdict(None, langid)


def check_fields(
    sources: Sequence[str],
    outputs: Sequence[str | None],
    statuses: Sequence[str],
    shorts: Sequence[bool],
    language: str,
    config: FilterConfig,
) -> tuple[str | None, list[str]]:
    """Check every translated field of one example: the first failing reason (or None) and the langid statuses."""
    langids = []
    for source, output, status, short in zip(sources, outputs, statuses, shorts, strict=True):
        verdict = check_translation(source, output, language, config, short=short, status=status)
        if verdict.reason:
            return verdict.reason, []
        if verdict.langid:
            langids.append(verdict.langid)
    return None, langids


# Reports written before the identifier was recorded.
UNRECORDED_IDENTIFIER = "unrecorded"


class FilterReport:
    """Counts per language: examples assigned and kept, drops per reason, language-id statuses of kept fields, and the
    language identifier that judged them (several after merging reports of different identifiers)."""

    def __init__(self, identifier: str = LANGID_IDENTIFIER):
        self.identifiers: set[str] = {identifier}
        self.assigned: Counter = Counter()
        self.kept: Counter = Counter()
        self.dropped: dict[str, Counter] = defaultdict(Counter)
        self.langid: dict[str, Counter] = defaultdict(Counter)
        self.by_task: dict[str, Counter] = defaultdict(Counter)

    def add(self, language: str, task: str, reason: str | None, langids: Sequence[str] = ()) -> None:
        self.assigned[language] += 1
        self.by_task[task]["assigned"] += 1
        if reason is None:
            self.kept[language] += 1
            self.by_task[task]["kept"] += 1
            self.langid[language].update(langids)
        else:
            self.dropped[language][reason] += 1
            self.by_task[task][f"dropped_{reason}"] += 1

    def to_dict(self) -> dict:
        languages = sorted(self.assigned)
        return {
            "langid_identifier": self.identifier,
            "languages": {
                lang: {
                    "assigned": self.assigned[lang],
                    "kept": self.kept[lang],
                    "dropped": {r: self.dropped[lang][r] for r in REASONS if self.dropped[lang][r]},
                    "langid": {s: self.langid[lang][s] for s in LANGID_STATUSES if self.langid[lang][s]},
                }
                for lang in languages
            },
            "tasks": {task: dict(sorted(c.items())) for task, c in sorted(self.by_task.items())},
        }

    @property
    def identifier(self) -> str:
        """The identifier's name; ``mixed: a, b`` for a merge of reports of different identifiers."""
        names = sorted(self.identifiers)
        return names[0] if len(names) == 1 else "mixed: " + ", ".join(names)

    @classmethod
    def from_dict(cls, data: dict) -> FilterReport:
        identifier = data.get("langid_identifier", UNRECORDED_IDENTIFIER)
        report = cls(identifier)
        if identifier.startswith("mixed: "):
            report.identifiers = set(identifier.removeprefix("mixed: ").split(", "))
        for lang, entry in data.get("languages", {}).items():
            report.assigned[lang] += entry["assigned"]
            report.kept[lang] += entry["kept"]
            report.dropped[lang].update(entry.get("dropped", {}))
            report.langid[lang].update(entry.get("langid", {}))
        for task, counts in data.get("tasks", {}).items():
            report.by_task[task].update(counts)
        return report

    def merge(self, other: FilterReport) -> FilterReport:
        # An empty report judged nothing: its identifier does not count.
        if not self.assigned:
            self.identifiers = set(other.identifiers)
        elif other.assigned and other.identifiers != self.identifiers:
            logger.warning(
                "Merging filter counts of different language identifiers (%s and %s): their wrong_language drops are "
                "not comparable.",
                self.identifier,
                other.identifier,
            )
        if other.assigned:
            self.identifiers |= other.identifiers
        self.assigned.update(other.assigned)
        self.kept.update(other.kept)
        for lang, c in other.dropped.items():
            self.dropped[lang].update(c)
        for lang, c in other.langid.items():
            self.langid[lang].update(c)
        for task, c in other.by_task.items():
            self.by_task[task].update(c)
        return self

    def totals(self) -> dict:
        dropped = Counter()
        for c in self.dropped.values():
            dropped.update(c)
        langid = Counter()
        for c in self.langid.values():
            langid.update(c)
        return {
            "assigned": sum(self.assigned.values()),
            "kept": sum(self.kept.values()),
            "dropped": {r: dropped[r] for r in REASONS if dropped[r]},
            "langid": {s: langid[s] for s in LANGID_STATUSES if langid[s]},
        }
