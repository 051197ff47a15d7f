"""Channel names: the one rule every transport applies before doing any work."""

import re

CHANNEL_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class InvalidChannel(ValueError):
    """A channel name outside the contract (1-128 characters of [A-Za-z0-9_.:-])."""


def check_channel(name: str) -> str:
    """Return ``name`` if it is a valid channel name, else raise :class:`InvalidChannel`."""
    if not CHANNEL_PATTERN.fullmatch(name):
        raise InvalidChannel(
            "channel names are 1-128 characters of letters, digits and _ . : -"
        )
    return name
