"""Opening an image: the one way training, evaluation, prediction and the demo app read a picture.

    from mblip.images import ImageDecodeError, check_image, open_image

    image = open_image("photo.jpg")  # decoded, detached from its file, upright (EXIF orientation applied)

`open_image` takes a path, the raw bytes of an image file, a `datasets.Image` record (`{"bytes": ..., "path": ...}`,
what an `Image(decode=False)` column holds) or an already opened PIL image, and returns a fully decoded PIL image
that no longer reads from its file. It applies the EXIF orientation (`PIL.ImageOps.exif_transpose`), so that a phone
photo is trained on, evaluated and predicted the way a viewer shows it. It does not change the mode: 16-bit (I;16,
I;16B), RGBA, P, CMYK and the rest come back as stored, and the processor's `to_rgb` (processing_mblip.py) converts
any of them.

Whatever goes wrong comes out as one exception, `ImageDecodeError`, naming the image and the reason; callers skip
and count it, and never substitute a blank image.

The decompression-bomb limit is an error here: an image of more than `max_image_pixels()` pixels (PIL's default,
89,478,485, unless changed) is refused before its pixels are decoded. PIL itself only warns between its limit and
twice that. Change the limit with the environment variable MBLIP_MAX_IMAGE_PIXELS (read at import, so it reaches
data-loading worker processes too; "none" turns the check off) or `set_max_image_pixels(n)`.

`check_image` is the cheap up-front check of training's data pass: the file exists, its header parses, it is within
the pixel limit, and its structure verifies (PIL's `verify`), all without decoding pixels. `check_files` is what that
pass (mblip/training_data.py) runs per image file, in its worker processes: each file's `check_kind` with its
`file_stamp`, the (size, mtime_ns, ctime_ns) its cached verdict holds for. This module imports only the standard
library and PIL (the `mblip` package's __init__ still imports transformers and the model classes: see
`mblip.training_data.check_pool_context` for how the workers avoid paying for that).
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from contextlib import contextmanager

from PIL import Image, ImageOps


# PIL's default limit, fixed here so that another library lowering or lifting PIL's global does not move ours.
DEFAULT_MAX_IMAGE_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)

# What PIL raises for a missing, truncated, corrupt or hostile file: OSError (UnidentifiedImageError, truncation,
# FileNotFoundError), SyntaxError and ValueError from broken headers, EOFError, struct.error and IndexError from
# some plugins' parsers, and its DecompressionBombError. Only this module catches them.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, Image.DecompressionBombError)


class ImageDecodeError(ValueError):
    """An image that cannot be used: `source` names it (a path, or a description of the bytes), `reason` says why,
    and `kind` is "missing" (no such file), "too_large" (over the pixel limit) or "unreadable" (anything else)."""

    def __init__(self, source: str, reason: str, kind: str = "unreadable"):
        super().__init__(f"cannot open image {source}: {reason}")
        self.source, self.reason, self.kind = source, reason, kind


# ------------------------------------------------------------------------------------------------ the pixel limit
def _limit_from_environment() -> int | None:
    value = os.environ.get("MBLIP_MAX_IMAGE_PIXELS", "").strip()
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    if value.lower() == "none":
        return None
    try:
        limit = int(value.replace("_", ""))
    except ValueError:
        raise ValueError(f"MBLIP_MAX_IMAGE_PIXELS must be a whole number of pixels or 'none', got {value!r}") from None
    if limit < 1:
        raise ValueError(f"MBLIP_MAX_IMAGE_PIXELS must be at least 1, got {limit}")
    return limit


_max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS


def max_image_pixels() -> int | None:
    """The largest image (width x height) that opens; None when the check is off."""
    return _max_pixels


def set_max_image_pixels(limit: int | None) -> None:
    """Sets the pixel limit for this process (None: no limit). PIL refuses on its own at twice *its* limit, before
    any check here could run, so a limit above PIL's raises PIL's too; a lower one leaves PIL's alone."""
    global _max_pixels
    if limit is not None and limit < 1:
        raise ValueError(f"The pixel limit must be at least 1 (or None for none), got {limit}")
    _max_pixels = limit
    if limit is None or (Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS):
        Image.MAX_IMAGE_PIXELS = limit


set_max_image_pixels(_limit_from_environment())


def _check_size(image: Image.Image, name: str):
    width, height = image.size
    limit = _max_pixels
    if limit is not None and width * height > limit:
        raise ImageDecodeError(
            name,
            f"{width}x{height} = {width * height:,} pixels, over the limit of {limit:,} pixels (a decompression-bomb "
            "guard; raise it with MBLIP_MAX_IMAGE_PIXELS or mblip.images.set_max_image_pixels)",
            kind="too_large",
        )


# ------------------------------------------------------------------------------------------------ sources
def source_name(source) -> str:
    """How messages name an image: its path where there is one."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, dict):
        if source.get("path"):
            return str(source["path"])
        return f"<{len(source.get('bytes') or b'')} bytes>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or f"<PIL image {source.mode} {source.size[0]}x{source.size[1]}>"
    return f"<{type(source).__name__}>"


def _file_of(source, name: str):
    """A path or a binary file object for Image.open."""
    if isinstance(source, dict):
        if source.get("bytes") is not None:
            return io.BytesIO(source["bytes"])
        if source.get("path"):
            return os.fspath(source["path"])
        raise ImageDecodeError(name, "the record holds neither bytes nor a path", kind="missing")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    raise ImageDecodeError(name, "expected a path, bytes, a {'bytes', 'path'} record or a PIL image", kind="unreadable")


def _reason(err: BaseException) -> tuple[str, str]:
    """(reason, kind) of an error PIL raised."""
    if isinstance(err, FileNotFoundError):
        return "no such file", "missing"
    if isinstance(err, Image.DecompressionBombError):
        # PIL's own refusal (above twice its limit) happens while the header is read, before our check can run.
        found = re.search(r"\((\d+) pixels\)", str(err))
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        return f"{pixels}, over the limit of {_max_pixels or Image.MAX_IMAGE_PIXELS:,} pixels ({err})", "too_large"
    return f"{type(err).__name__}: {err}", "unreadable"


@contextmanager
def _opened(source, name: str):
    """The lazily opened image (header read, pixels not yet decoded), with PIL's errors as ImageDecodeError."""
    try:
        if isinstance(source, Image.Image):
            yield source
            return
        with warnings.catch_warnings():
            # Our limit is an error (see _check_size); PIL's warning below twice its own limit would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(_file_of(source, name))
        with image:
            yield image
    except ImageDecodeError:
        raise
    except DECODE_ERRORS as err:
        reason, kind = _reason(err)
        raise ImageDecodeError(name, reason, kind) from err


# ------------------------------------------------------------------------------------------------ the API
def open_image(source) -> Image.Image:
    """The image fully decoded, detached from its file and upright (EXIF orientation applied), in its stored mode.

    `source`: a path, the bytes of an image file, a `{"bytes": ..., "path": ...}` record (bytes win) or a PIL image.
    Raises `ImageDecodeError` for a missing, truncated, corrupt or over-limit image; never returns a stand-in.
    """
    name = source_name(source)
    with _opened(source, name) as image:
        _check_size(image, name)
        try:
            image.load()  # decode now: a truncated file fails here, not inside the processor mid-batch
            # Phone photos store their rotation in EXIF; the model should see what a viewer shows. Without an
            # orientation this is a copy, so the result never reads from the (closed) file again.
            return ImageOps.exif_transpose(image)
        except DECODE_ERRORS as err:
            reason, kind = _reason(err)
            raise ImageDecodeError(name, reason, kind) from err


def check_image(source) -> None:
    """The cheap up-front check: raises `ImageDecodeError` unless the image exists, its header parses, it is within
    the pixel limit and its file structure verifies. Pixels are not decoded, so a file can pass and still fail to
    decode in `open_image` (callers count that too)."""
    name = source_name(source)
    if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        raise ImageDecodeError(name, "no such file", kind="missing")
    with _opened(source, name) as image:
        _check_size(image, name)
        if isinstance(source, Image.Image):
            return  # already opened by someone else: verify() would consume it
        try:
            image.verify()  # reads the whole file and checks its structure, without decoding pixels
        except DECODE_ERRORS as err:
            reason, kind = _reason(err)
            raise ImageDecodeError(name, reason, kind) from err


# ------------------------------------------------------------------------------------------------ checking files
NO_STAMP = (-1, -1, -1)  # the stamp of a file that cannot be stat'ed (missing), and of an embedded image


def file_stamp(path) -> tuple[int, int, int]:
    """(size, mtime_ns, ctime_ns) of an image file, NO_STAMP if it cannot be stat'ed: what a cached verdict about the
    file holds for. ctime also moves with chmod/chown (a permission fix) and with copies that restore the mtime."""
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return NO_STAMP
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def check_kind(source) -> str:
    """'' for an image that passes `check_image`, else the `kind` of its `ImageDecodeError`."""
    try:
        check_image(source)
    except ImageDecodeError as err:
        return err.kind
    return ""


def check_files(paths: list[str]) -> list[tuple[str, tuple[int, int, int]]]:
    """Per path, (its `check_kind`, its `file_stamp`): training's data check of image files, a chunk at a time (the
    function its worker processes run)."""
    results = []
    for path in paths:
        stamp = file_stamp(path)  # first: a file that changes during its check is checked again by the next run
        results.append((check_kind(path), stamp))
    return results
