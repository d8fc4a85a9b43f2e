"""The console's session: a signed cookie naming the API key that signed in, and the CSRF token its forms carry.

Nothing of the session is stored server-side (no schema change): the cookie holds ``{key_id, csrf}`` signed with
itsdangerous under a secret kept in the L07 home (``console.key``, 0600), and expires after ``SESSION_MAX_AGE_S``.
The key itself never enters the cookie; every request re-reads the key's record, so a revoked key or a changed role
takes effect on the next click. The cookie is HttpOnly (no script reads it) and SameSite=Strict (no other site's
page sends it); every form also posts the session's CSRF token, compared in constant time.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from ...settings import Settings, private_dir

SESSION_COOKIE = "l07_console"
FLASH_COOKIE = "l07_console_flash"
SESSION_MAX_AGE_S = 8 * 3600
SECRET_FILE = "console.key"


def console_secret(settings: Settings) -> bytes:
    """The signing secret, created on first use in the L07 home (owner-only)."""
    path = Path(private_dir(settings.home)) / SECRET_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


@dataclass(frozen=True)
class ConsoleSession:
    """A decoded cookie: the signed-in key (None before sign-in) and the CSRF token of its forms."""

    key_id: str | None
    csrf: str

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf, str(presented))


class SessionCodec:
    """Signs and reads the session and flash cookies.

    Args:
        secret: The signing secret (``console_secret``).
    """

    def __init__(self, secret: bytes) -> None:
        self._session = URLSafeTimedSerializer(secret, salt="l07-console-session")
        self._flash = URLSafeTimedSerializer(secret, salt="l07-console-flash")

    def read(self, request: Request) -> ConsoleSession | None:
        """The request's session; None when there is no cookie, or it is forged, altered or expired."""
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            data: dict[str, Any] = self._session.loads(raw, max_age=SESSION_MAX_AGE_S)
        except BadSignature:
            return None
        csrf = data.get("csrf")
        if not isinstance(csrf, str) or not csrf:
            return None
        key_id = data.get("key_id")
        return ConsoleSession(key_id=key_id if isinstance(key_id, str) else None, csrf=csrf)

    @staticmethod
    def new(key_id: str | None) -> ConsoleSession:
        """A fresh session (new CSRF token) for ``key_id`` (None: the sign-in form's anonymous session)."""
        return ConsoleSession(key_id=key_id, csrf=secrets.token_urlsafe(32))

    def store(self, request: Request, response: Response, session: ConsoleSession) -> None:
        """Set the session's signed cookie on ``response``."""
        key_id = session.key_id
        response.set_cookie(SESSION_COOKIE, self._session.dumps({"key_id": key_id, "csrf": session.csrf}),
                            max_age=SESSION_MAX_AGE_S, path="/ui", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")

    @staticmethod
    def clear(response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/ui", httponly=True, samesite="strict")

    def flash(self, request: Request, response: Response, message: str, ok: bool = True) -> None:
        """A one-time message for the next page (the outcome of an action, after its redirect)."""
        response.set_cookie(FLASH_COOKIE, self._flash.dumps({"m": message[:500], "ok": ok}), max_age=60, path="/ui",
                            httponly=True, samesite="strict", secure=request.url.scheme == "https")

    def take_flash(self, request: Request) -> dict[str, Any] | None:
        raw = request.cookies.get(FLASH_COOKIE)
        if not raw:
            return None
        try:
            data = self._flash.loads(raw, max_age=60)
        except BadSignature:
            return None
        return {"message": str(data.get("m", "")), "ok": bool(data.get("ok", True))}
