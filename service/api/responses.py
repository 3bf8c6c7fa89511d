"""A JSON answer that can always be sent, for answers that carry finished work.

starlette's JSONResponse writes UTF-8, and fails on a string holding a lone UTF-16 surrogate:
the route has done its work, and the caller gets a 500 instead. Strings from the request are
refused at decode time (service.api.body), but a generation's answer also carries strings from
Replicate (output URLs, a failed task's error text), and a prediction that was paid for must
not be lost to one odd character. So when UTF-8 fails, the same JSON is written with \\uXXXX
escapes instead, which every JSON reader accepts.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse


class SafeJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            text = json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
            return text.encode("ascii")
