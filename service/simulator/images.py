"""Output files: real images rendered with Pillow on first download, then cached (LRU).

Rendering runs in a worker thread so a burst of downloads never stalls the event loop;
concurrent downloads of the same file share one render.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import textwrap
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

CONTENT_TYPES = {"webp": "image/webp", "jpg": "image/jpeg", "png": "image/png"}
_PIL_FORMATS = {"webp": "WEBP", "jpg": "JPEG", "png": "PNG"}


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    caption: str  # e.g. "black-forest-labs/flux-dev #0 1024x1024"
    width: int
    height: int
    fmt: str  # "webp" | "jpg" | "png"
    quality: int
    seed: int


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render(request: ImageRequest) -> bytes:
    """A flat colour derived from the prompt and seed, with the prompt written on it."""
    digest = hashlib.sha256(f"{request.prompt}|{request.seed}".encode()).digest()
    background = (digest[0] // 2 + 64, digest[1] // 2 + 64, digest[2] // 2 + 64)
    image = Image.new("RGB", (request.width, request.height), background)
    draw = ImageDraw.Draw(image)
    margin = max(8, request.width // 32)
    font_px = max(10, min(request.width, request.height) // 20)
    draw.rectangle(
        (margin // 2, margin // 2, request.width - margin // 2, request.height - margin // 2),
        outline=(255, 255, 255),
        width=max(1, margin // 8),
    )
    chars_per_line = max(8, int((request.width - 2 * margin) / (font_px * 0.6)))
    lines = textwrap.wrap(request.prompt, chars_per_line)[:12] or ["(empty prompt)"]
    y = margin
    for line in lines:
        draw.text((margin, y), line, fill=(255, 255, 255), font=_font(font_px))
        y += int(font_px * 1.3)
    draw.text(
        (margin, request.height - margin - font_px // 2 - 4),
        request.caption,
        fill=(20, 20, 20),
        font=_font(max(10, font_px // 2)),
    )
    buffer = io.BytesIO()
    fmt = _PIL_FORMATS[request.fmt]
    if fmt == "PNG":
        image.save(buffer, fmt, optimize=False)
    else:
        image.save(buffer, fmt, quality=max(1, request.quality))
    return buffer.getvalue()


class ImageCache:
    """Rendered files by key, least recently used evicted beyond `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._done: OrderedDict[str, bytes] = OrderedDict()
        self._pending: dict[str, asyncio.Task[bytes]] = {}

    async def get(self, key: str, request: ImageRequest) -> bytes:
        cached = self._done.get(key)
        if cached is not None:
            self._done.move_to_end(key)
            return cached
        task = self._pending.get(key)
        if task is None:
            task = asyncio.create_task(self._render(key, request))
            self._pending[key] = task
        # Shielded: a client hanging up must not cancel a render others may be waiting for.
        return await asyncio.shield(task)

    async def _render(self, key: str, request: ImageRequest) -> bytes:
        try:
            data = await asyncio.to_thread(render, request)
        finally:
            self._pending.pop(key, None)
        if self.capacity > 0:
            self._done[key] = data
            while len(self._done) > self.capacity:
                self._done.popitem(last=False)
        return data

    def discard_prefix(self, prefix: str) -> None:
        """Forget every file whose key starts with `prefix` (an expired prediction)."""
        for key in [k for k in self._done if k.startswith(prefix)]:
            del self._done[key]

    def clear(self) -> None:
        self._done.clear()
