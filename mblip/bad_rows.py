"""Bad-row accounting: one report type and one threshold flag, ``--max_bad_rows``, for every command line.

A row that cannot be used (a malformed line, a missing or unreadable image, ...) is never repaired or replaced: it
is skipped, counted by reason, a few are kept as examples with their file and row, and more than ``--max_bad_rows``
(a fraction of all rows) fails the run with the counts and examples in the message.

    bad = BadRows(total=len(rows))
    bad.add("unreadable image", row="photos/x.jpg", excerpt="truncated")
    bad.check(args.max_bad_rows)          # BadRowsError past the threshold
    report["bad_rows"] = bad.to_dict()
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


FLAG = "--max_bad_rows"
MAX_BAD_ROWS_HELP = "Fail when more than this fraction of the rows is bad (skipped, counted and reported)."


class BadRowsError(ValueError):
    """More bad rows than ``--max_bad_rows`` allows."""


def check_threshold(value: float) -> float:
    """For ``__post_init__``: the threshold is a fraction."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{FLAG} is a fraction in [0, 1], got {value}")
    return value


@dataclass
class BadRows:
    """Bad rows out of ``total``: counts by reason and the first ``max_examples`` with where they were."""

    total: int = 0
    noun: str = "rows"  # what a row is, for messages: "input rows", "images", ...
    state: str = "bad"  # what is wrong with them, for messages: "malformed", "unreadable", ...
    max_examples: int = 10
    by_reason: Counter = field(default_factory=Counter)
    examples: list[dict] = field(default_factory=list)

    def add(self, reason: str, row: str | int | None = None, excerpt: str = "", count: int = 1) -> None:
        """``count`` bad rows (one example kept); ``row`` locates it (file:line, row index, image path)."""
        self.by_reason[reason] += count
        if len(self.examples) < self.max_examples:
            self.examples.append({"row": row, "reason": reason, "excerpt": str(excerpt)[:300]})

    @property
    def count(self) -> int:
        return sum(self.by_reason.values())

    def __len__(self) -> int:
        return self.count

    @property
    def fraction(self) -> float:
        return self.count / self.total if self.total else 0.0

    def over(self, threshold: float) -> bool:
        return self.fraction > threshold

    def describe(self, limit: int = 3) -> str:
        """``reason: count, ...; e.g. where (reason: detail); ...``"""
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self.by_reason.most_common())
        shown = "; ".join(
            f"{e['row']} ({e['reason']}{': ' + e['excerpt'] if e['excerpt'] else ''})" for e in self.examples[:limit]
        )
        return f"{reasons}; e.g. {shown}" if shown else reasons

    def message(self, threshold: float, hint: str = "") -> str:
        return (
            f"{self.count} of {self.total} {self.noun} ({self.fraction:.1%}) are {self.state}, more than {FLAG}={threshold}. "
            f"By reason: {self.describe()}{'. ' + hint if hint else ''}"
        )

    def check(self, threshold: float, hint: str = "") -> None:
        """Raises ``BadRowsError`` (a ValueError) when more than ``threshold`` of the rows are bad."""
        if self.over(threshold):
            raise BadRowsError(self.message(threshold, hint))

    def to_dict(self) -> dict:
        """For JSON reports."""
        return {
            "total": self.total,
            "count": self.count,
            "fraction": round(self.fraction, 6),
            "by_reason": dict(self.by_reason.most_common()),
            "examples": list(self.examples),
        }
