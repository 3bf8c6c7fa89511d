"""`GET /v1/predictions`: the caller's predictions, newest first, 100 a page, cursor-paginated.

Replicate's reference (predictions.list, https://replicate.com/docs/reference/http): "a
paginated list of all predictions created by the user or organization associated with the
provided API token ... 100 records per page ... sorted with the most recent prediction first";
the body is `{"next": url|null, "previous": url|null, "results": [prediction, ...]}`; query
filters `created_after` ("at or after", ISO 8601) and `created_before` ("before"), and
`source=web` (changelog 2026-01-14: only predictions made on the website; none are, here).
The documented list result has no `logs` key, unlike GET by id, so results leave it out.

The cursor is opaque to callers. Like Django REST framework's CursorPagination (which
Replicate's cursors look like: base64 of `p=<created_at>`), it holds a position, not an
offset, so predictions created between two page reads do not shift the pages::

    order: (created_at, seq) descending       seq = creation order, breaks created_at ties
    next     = cursor(last item on the page)             → the items after it (older)
    previous = cursor(first item on the page, reverse)   → the PAGE_SIZE items before it (newer)

Filters stay in the `next`/`previous` URLs; an undecodable cursor answers 404 "Invalid cursor"
(DRF's answer; Replicate's exact body for it is not documented).
"""

from __future__ import annotations

import base64
import binascii
import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode

from service.simulator.prediction import SimPrediction

PAGE_SIZE = 100
CURSOR = "cursor"

SortKey = tuple[float, int]  # (-created_at, -seq): ascending = newest first


class ListError(ValueError):
    """A query the list endpoint refuses: `status` is the HTTP code to answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Cursor:
    key: SortKey  # the boundary item's sort key (the boundary itself is never included)
    reverse: bool  # False: the items after the boundary; True: the items before it

    def encode(self) -> str:
        created_at, seq = -self.key[0], -self.key[1]
        raw = urlencode({"r": int(self.reverse), "p": repr(created_at), "s": seq})
        return base64.urlsafe_b64encode(raw.encode()).decode()

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            fields = dict(parse_qsl(base64.urlsafe_b64decode(text.encode()).decode()))
            key = (-float(fields["p"]), -int(fields["s"]))
            return cls(key, fields["r"] == "1")
        except (binascii.Error, UnicodeError, KeyError, ValueError):
            raise ListError(404, "Invalid cursor") from None


@dataclass(frozen=True)
class ListQuery:
    created_after: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive
    web_only: bool = False
    cursor: Cursor | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> ListQuery:
        """The query string's filters and cursor; unknown parameters are ignored."""
        cursor = params.get(CURSOR)
        return cls(
            created_after=_parse_time(params, "created_after"),
            created_before=_parse_time(params, "created_before"),
            web_only=params.get("source") == "web",
            cursor=Cursor.decode(cursor) if cursor else None,
        )

    def admits(self, prediction: SimPrediction) -> bool:
        # Compared as the API shows created_at (microseconds), so a prediction is "at or
        # after" its own displayed timestamp.
        created = datetime.fromtimestamp(prediction.created_at, tz=UTC)
        if self.created_after is not None and created < self.created_after:
            return False
        if self.created_before is not None and created >= self.created_before:
            return False
        return not self.web_only  # every simulated prediction has source "api"


@dataclass(frozen=True)
class ListPage:
    items: list[SimPrediction]
    next_cursor: Cursor | None
    previous_cursor: Cursor | None


def sort_key(prediction: SimPrediction) -> SortKey:
    return (-prediction.created_at, -prediction.seq)


def list_page(
    predictions: Iterable[SimPrediction], query: ListQuery, page_size: int = PAGE_SIZE
) -> ListPage:
    """One page of `predictions` (already the caller's own) under `query`."""
    ordered = sorted((p for p in predictions if query.admits(p)), key=sort_key)
    keys = [sort_key(p) for p in ordered]
    cursor = query.cursor
    if cursor is None:
        start, end = 0, min(page_size, len(ordered))
    elif cursor.reverse:
        end = bisect.bisect_left(keys, cursor.key)
        start = max(0, end - page_size)
    else:
        start = bisect.bisect_right(keys, cursor.key)
        end = min(start + page_size, len(ordered))
    items = ordered[start:end]
    # An empty page (a cursor past either end) links nowhere.
    next_cursor = Cursor(keys[end - 1], reverse=False) if items and end < len(ordered) else None
    previous_cursor = Cursor(keys[start], reverse=True) if items and start > 0 else None
    return ListPage(items, next_cursor, previous_cursor)


def page_url(base_url: str, params: Iterable[tuple[str, str]], cursor: Cursor | None) -> str | None:
    """`base_url` with the request's other query parameters and this cursor (None: no page)."""
    if cursor is None:
        return None
    kept = [(name, value) for name, value in params if name != CURSOR]
    return f"{base_url}?{urlencode([*kept, (CURSOR, cursor.encode())])}"


def _parse_time(params: Mapping[str, str], name: str) -> datetime | None:
    text = params.get(name)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ListError(400, f"{name}: enter a valid ISO 8601 date-time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
