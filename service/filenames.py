"""Output filenames: the `filename` next to each returned URL.

The service stores no files; these names are suggestions the caller may save under, so they
must be safe to use as a file name anywhere:

- only the last path component is kept, trimmed; no `/`, `\\`, control characters, `..`,
  leading dots or dashes; letters (any script), digits, `-`, `_` and `.` only (spaces and
  anything else become `_`); Windows device names (`CON`, `NUL`, ...) get a leading `_`; the
  stem is cut to MAX_STEM_CHARS;
- a known image extension given by the caller is kept as given, even when the output's format
  differs (`red_car.jpg` stays `red_car.jpg` for a webp output: the seed's behaviour);
- without one, the extension comes from the real output URL (`.../out-0.webp` → `.webp`), and
  if the URL has none, from `default_extension` (the model's default output format). The seed
  appended `.jpg` whatever the format; we name the file after what it is;
- several outputs are numbered from 1: `blue_wave_1.jpg`, `blue_wave_2.jpg`;
- no name (or nothing left after cleaning) → `default_stem`, which the caller makes stable,
  e.g. `flux-dev_<prediction_id>`.

    >>> urls = ["https://x/out-0.webp", "https://x/out-1.webp"]
    >>> build_filenames("blue_wave", urls, default_stem="flux-dev_abc")
    ['blue_wave_1.webp', 'blue_wave_2.webp']
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import urlsplit

from service.errors import BadRequest

MAX_OUTPUT_FILENAME_CHARS = 255
MAX_STEM_CHARS = 120
FALLBACK_STEM = "image"

# Extensions a caller's name may end in and keep; anything else is part of the stem.
IMAGE_EXTENSIONS = frozenset(
    {"jpg", "jpeg", "png", "webp", "gif", "avif", "bmp", "tif", "tiff", "heic", "heif"}
)
_URL_EXTENSION_RE = re.compile(r"[A-Za-z0-9]{1,8}")
_WINDOWS_DEVICE_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL"}
    | {f"COM{i}" for i in range(1, 10)}
    | {f"LPT{i}" for i in range(1, 10)}
)


def validate_output_filename(value: object, *, field: str = "output_filename") -> str:
    """Type and length check for a caller's `output_filename`; the value itself is kept as given.

    Cleaning happens later, in `build_filenames`, so the response can echo what was sent.
    """
    if not isinstance(value, str):
        raise BadRequest(f"Invalid field '{field}': must be a string")
    if len(value) > MAX_OUTPUT_FILENAME_CHARS:
        raise BadRequest(
            f"Invalid field '{field}': must be at most {MAX_OUTPUT_FILENAME_CHARS} characters "
            f"(got {len(value)})"
        )
    return value


def _clean(text: str) -> str:
    """Reduce `text` to the safe charset; may return ''."""
    text = unicodedata.normalize("NFC", text)
    text = re.split(r"[/\\]", text)[-1]  # the last path component only
    # Drop control, format (bidi overrides) and unassigned characters, then trim.
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C").strip()
    text = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
    cleaned = re.sub(r"\.{2,}", ".", text)
    return cleaned.lstrip(".-").rstrip(".")


def _finish_stem(stem: str) -> str:
    stem = stem[:MAX_STEM_CHARS].rstrip(".")
    if stem.split(".")[0].upper() in _WINDOWS_DEVICE_NAMES:
        stem = "_" + stem
    return stem


def _split_name(cleaned: str) -> tuple[str, str | None]:
    stem, dot, ext = cleaned.rpartition(".")
    if dot and stem and ext.lower() in IMAGE_EXTENSIONS:
        return stem.rstrip("."), ext
    return cleaned, None


def _url_extension(url: str, default_extension: str) -> str:
    try:
        path = urlsplit(url).path
    except ValueError:
        path = ""
    last = path.rsplit("/", 1)[-1]
    _, dot, ext = last.rpartition(".")
    if dot and _URL_EXTENSION_RE.fullmatch(ext):
        return ext.lower()
    return default_extension


def build_filenames(
    output_filename: str | None,
    urls: list[str],
    *,
    default_stem: str,
    default_extension: str = "webp",
) -> list[str]:
    """One safe, unique filename per output URL, in the same order (see the module docstring)."""
    stem, given_ext = _split_name(_clean(output_filename or ""))
    stem = _finish_stem(stem)
    if not stem:
        stem = _finish_stem(_clean(default_stem)) or FALLBACK_STEM
    fallback_ext = default_extension.lstrip(".").lower()
    if not _URL_EXTENSION_RE.fullmatch(fallback_ext):
        fallback_ext = "bin"
    names: list[str] = []
    for number, url in enumerate(urls, start=1):
        ext = given_ext or _url_extension(url, fallback_ext)
        suffix = f"_{number}" if len(urls) > 1 else ""
        names.append(f"{stem}{suffix}.{ext}")
    return names
