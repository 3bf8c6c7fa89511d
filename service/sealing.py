"""Sealing a caller's Replicate token into a lease record, so that another replica can settle
the caller's prediction if this one dies (docs/slot-ownership.md).

Fernet (from `cryptography`): AES-128-CBC with an HMAC-SHA256, and a timestamp checked on
opening, so a sealed token is refused once older than the prediction it served can live. The
key (TOKEN_SEALING_KEY, 32 url-safe base64 bytes) is shared by every replica; without it, no
token is sealed and such orphans are held until their deadline instead.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken


class TokenSealer:
    def __init__(self, key: str | None, *, max_age_s: float) -> None:
        self._fernet = Fernet(key.encode()) if key else None
        self._max_age_s = max(1, int(max_age_s))

    @property
    def enabled(self) -> bool:
        return self._fernet is not None

    def seal(self, token: str) -> str | None:
        if self._fernet is None:
            return None
        return self._fernet.encrypt(token.encode()).decode()

    def open(self, sealed: str) -> str | None:
        """The token, or None: no key, tampered with, sealed with another key, or too old."""
        if self._fernet is None or not sealed:
            return None
        try:
            return self._fernet.decrypt(sealed.encode(), ttl=self._max_age_s).decode()
        except (InvalidToken, ValueError):
            return None


def new_key() -> str:
    """A fresh TOKEN_SEALING_KEY (the demo makes one; operators run `python -m service.sealing`)."""
    return Fernet.generate_key().decode()


if __name__ == "__main__":
    print(new_key())
