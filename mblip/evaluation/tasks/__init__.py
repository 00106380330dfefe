"""The paper's benchmarks, one module each; `get_task(name)` returns a reader for the released annotation files."""

from __future__ import annotations

from .base import Example, ImageFinder, Problem, Task, TaskData, image_dirs_from_arg
from .chair import CHAIR
from .coco import COCOCaptions
from .marvl import MaRVL
from .maxm import MaXM
from .pope import POPE
from .vqav2 import VQAv2
from .xflickrco import XFlickrCO
from .xgqa import XGQA
from .xm3600 import XM3600
from .xvnli import XVNLI


TASKS: dict[str, type[Task]] = {
    task.name: task for task in (XM3600, XFlickrCO, XGQA, MaXM, XVNLI, MaRVL, POPE, COCOCaptions, VQAv2, CHAIR)
}


def get_task(name: str) -> Task:
    """A fresh task object; ValueError listing the supported tasks for an unknown name."""
    key = name.strip().lower()
    if key not in TASKS:
        raise ValueError(f"Unknown task {name!r}. Supported tasks: {', '.join(TASKS)}")
    return TASKS[key]()


def resolve_languages(task: Task, languages: str | list[str] | None) -> list[str]:
    """The task's languages for "all"/None, else the requested ones (benchmark aliases such as "he" -> "iw" applied);
    ValueError listing the supported languages for an unknown one."""
    if languages is None or languages == "all" or languages == ["all"]:
        return list(task.languages)
    requested = [
        code.strip() for code in (languages.split(",") if isinstance(languages, str) else languages) if code.strip()
    ]
    if not requested:
        raise ValueError(f"No language given for {task.title}. Supported languages: {', '.join(task.languages)}")
    resolved = []
    for code in requested:
        code = task.aliases.get(code, code)
        if code not in task.languages:
            raise ValueError(
                f"Unknown language {code!r} for {task.title}. Supported languages: {', '.join(task.languages)}"
            )
        if code not in resolved:
            resolved.append(code)
    return resolved


def resolve_splits(task: Task, splits: str | None) -> list[str]:
    if splits is None:
        return list(task.default_splits)
    requested = [s.strip() for s in splits.split(",") if s.strip()]
    unknown = [s for s in requested if s not in task.splits]
    if unknown or not requested:
        raise ValueError(
            f"Unknown split {unknown or splits!r} for {task.title}. Supported splits: {', '.join(task.splits)}"
        )
    return list(dict.fromkeys(requested))


__all__ = [
    "TASKS",
    "Example",
    "ImageFinder",
    "Problem",
    "Task",
    "TaskData",
    "get_task",
    "image_dirs_from_arg",
    "resolve_languages",
    "resolve_splits",
]
