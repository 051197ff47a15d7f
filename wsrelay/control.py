"""The requests every process of a deployment obeys: end the clients of one identity.

``relay.disconnect(identity)`` and ``relay.unsubscribe(identity, channel)`` act on the
process they are called in, and go to every other process sharing its broker as a
:class:`Command` on the broker's control channel (on Redis the channel ``@control``,
which no client can name, every worker watches and replays after a reconnection, as any
channel). An identity travels as its :func:`identity_key`, canonical JSON,
so it compares the same in every process: the identity hook must return a JSON value
(a ``str``, a number, a list...), not an object such as a ``User``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from .channels import check_channel
from .errors import InvalidChannel, InvalidIdentity, WsrelayError

DISCONNECT = "disconnect"
UNSUBSCRIBE = "unsubscribe"


class InvalidCommand(WsrelayError, ValueError):
    """A control message this version of wsrelay cannot read (it is ignored)."""


def identity_key(identity: Any) -> str:
    """``identity`` as canonical JSON (sorted keys, no spaces): equal identities have equal
    keys in every process (``"42"`` and ``42`` differ; a tuple and a list are the same)."""
    try:
        return json.dumps(identity, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidIdentity(
            f"an identity must be a JSON value (a str, a number, a list, a dict of them), "
            f"not {type(identity).__name__}: return e.g. user.id from the identity hook, and "
            f"pass the same to disconnect/unsubscribe ({exc})"
        ) from None


@dataclass(frozen=True, slots=True)
class Command:
    """End the clients of ``identity`` (its :func:`identity_key`): all their connections
    (``disconnect``), or their subscriptions to ``channel`` (``unsubscribe``)."""

    op: str
    identity: str
    reason: str
    channel: str | None = None

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes) -> Command:
        """The command in ``payload``; :class:`InvalidCommand` for anything else."""
        try:
            fields = json.loads(payload)
            command = cls(**fields)
        except (ValueError, TypeError) as exc:
            raise InvalidCommand(f"not a control command: {exc}") from None
        if command.op not in (DISCONNECT, UNSUBSCRIBE) or not all(
            isinstance(value, str) for value in (command.identity, command.reason)
        ):
            raise InvalidCommand(f"not a control command: {payload[:200]!r}")
        if command.op == UNSUBSCRIBE:
            if not isinstance(command.channel, str):
                raise InvalidCommand("an unsubscribe names its channel")
            try:
                check_channel(command.channel)
            except InvalidChannel as exc:
                raise InvalidCommand(str(exc)) from None
        return command
