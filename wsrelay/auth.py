"""Signed, expiring channel tokens, and the rule that says when one is needed.

A token is issued by whoever holds ``WSRELAY_SECRET_KEY`` (``manage.py token``,
or an application's own login view through ``relay.tokens.issue``) and handed
to a client, which shows it on every request; the server keeps no session.
Signing is itsdangerous (HMAC-SHA256 with a salt of our own, so a token of
another Flask feature keyed the same way is never a wsrelay token).

Pure: no request, no socket; ``now`` is a parameter so expiry is testable
without waiting. Refusals are :class:`~wsrelay.errors.ApiError` with the
status and code of the contract, answered before any upgrade.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

from .errors import ApiError

SUBSCRIBE = "subscribe"
PUBLISH = "publish"
ACTIONS = (SUBSCRIBE, PUBLISH)
#: Channels whose name starts with this always need a token that grants them.
PRIVATE_PREFIX = "private-"
#: A channel name (see :mod:`wsrelay.channels`) with the glob characters of :mod:`fnmatch`.
PATTERN = re.compile(r"[A-Za-z0-9_.:*?!\[\]-]{1,128}")
DEFAULT_TTL = 3600.0
#: The longest subject a token may name (it keys a rate bucket on every worker).
MAX_SUBJECT = 200
_SALT = "wsrelay.channel-token"
_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="wsrelay"'}


@dataclass(frozen=True, slots=True)
class Claims:
    """What a token grants: a channel pattern, the publish right, an expiry (Unix time), and
    whom it was issued to (``subject``: optional; its publishes share one rate)."""

    channel: str
    publish: bool
    expires: float | None
    subject: str | None = None

    def grants(self, channel: str, action: str) -> bool:
        """True when ``action`` on ``channel`` is allowed (subscribe comes with every token)."""
        if action == PUBLISH and not self.publish:
            return False
        return fnmatch.fnmatchcase(channel, self.channel)


@dataclass(frozen=True, slots=True)
class Access:
    """What one admitted client may do on its channel, and until when."""

    channel: str
    claims: Claims | None
    may_publish: bool
    #: When the token this access rests on expires (None: it rests on no expiring token).
    expires: float | None


def check_pattern(pattern: str) -> str:
    """Return a valid channel pattern, else raise ``ValueError`` saying what is allowed."""
    if not PATTERN.fullmatch(pattern):
        raise ValueError(
            "a channel pattern is 1-128 characters of letters, digits, _ . : - "
            "and the wildcards * ? [ ]"
        )
    return pattern


def check_ttl(ttl: float) -> float:
    """Return a valid ttl, else raise ``ValueError``: a finite, positive number of seconds
    (NaN or infinity would make a token that never expires)."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < math.inf:
        raise ValueError("ttl must be a finite, positive number of seconds")
    return ttl


def _expiry(value: Any) -> float:
    """A token's ``exp``: a finite Unix time (a number; NaN or infinity would never pass)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("exp is a finite Unix time")
    return float(value)


def check_subject(subject: str) -> str:
    """Return a valid subject, else raise ``ValueError`` saying what is allowed."""
    if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT:
        raise ValueError(f"a subject is a string of 1-{MAX_SUBJECT} characters")
    return subject


def needs_token(channel: str, require_token: bool) -> bool:
    """``private-*`` channels always do; every channel does under WSRELAY_REQUIRE_TOKEN=1."""
    return require_token or channel.startswith(PRIVATE_PREFIX)


class Tokens:
    """Issues and verifies tokens with one secret key."""

    def __init__(self, secret: str) -> None:
        self._serializer = URLSafeSerializer(
            secret, salt=_SALT, signer_kwargs={"digest_method": hashlib.sha256}
        )

    @classmethod
    def from_config(cls, secret: str) -> Tokens:
        """Keyed by ``secret``, or by a random per-process key when it is empty (development:
        tokens from ``manage.py token`` then open nothing)."""
        return cls(secret or secrets.token_urlsafe(32))

    def issue(
        self, channel: str, *, publish: bool = False, ttl: float | None = DEFAULT_TTL,
        subject: str | None = None, now: float | None = None,
    ) -> str:
        """A token for the channels matching ``channel`` (a glob), valid ``ttl`` seconds
        (None: forever; else finite and positive). Subscribe is always granted; publish
        only with ``publish=True``. ``subject`` names the user or service it is for:
        every client showing a token of that subject shares one publish rate, from any
        address."""
        check_pattern(channel)
        if ttl is not None:
            check_ttl(ttl)
        payload: dict[str, Any] = {"ch": channel, "pub": bool(publish)}
        if subject is not None:
            payload["sub"] = check_subject(subject)
        if ttl is not None:
            payload["exp"] = round((time.time() if now is None else now) + ttl, 3)
        return self._serializer.dumps(payload)

    def verify(self, token: str, now: float | None = None) -> Claims:
        """The claims of a genuine, unexpired token; else a 401 ``invalid_token`` or
        ``token_expired``."""
        try:
            payload = self._serializer.loads(token)
            claims = Claims(
                channel=check_pattern(payload["ch"]),
                publish=payload["pub"] is True,
                expires=_expiry(payload["exp"]) if "exp" in payload else None,
                subject=check_subject(payload["sub"]) if "sub" in payload else None,
            )
        except (BadSignature, KeyError, TypeError, ValueError):
            raise ApiError(
                401, "invalid_token",
                "the token is malformed, was altered, or was signed with another "
                "WSRELAY_SECRET_KEY", headers=_UNAUTHORIZED,
            ) from None
        if claims.expires is not None and claims.expires <= (time.time() if now is None else now):
            raise ApiError(401, "token_expired", "the token has expired", headers=_UNAUTHORIZED)
        return claims


def authorize(
    tokens: Tokens, token: str | None, channel: str, action: str, *,
    require_token: bool, now: float | None = None,
) -> Access:
    """Decide what a client presenting ``token`` (or none) may do on ``channel``.

    A token that is shown is always checked, even where none is needed: a
    client with a broken token learns so at once. Where a token is needed it
    must grant ``action``; on a raw WebSocket (subscribe) it also decides
    whether the client's messages may be published. Where none is needed,
    everyone may subscribe and publish, as on any public channel.
    """
    claims = tokens.verify(token, now) if token else None
    if not needs_token(channel, require_token):
        return Access(channel, claims, may_publish=True, expires=None)
    if claims is None:
        why = "private channels" if channel.startswith(PRIVATE_PREFIX) else "every channel"
        raise ApiError(
            401, "token_required",
            f"{why} need a token: pass ?token=... or 'Authorization: Bearer ...'",
            headers=_UNAUTHORIZED,
        )
    if not claims.grants(channel, action):
        raise ApiError(
            403, "forbidden", f"the token does not grant {action} on {channel!r}"
        )
    return Access(
        channel, claims, may_publish=claims.grants(channel, PUBLISH), expires=claims.expires
    )
