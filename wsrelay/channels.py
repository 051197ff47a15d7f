"""Channel names: the one rule every transport applies before doing any work."""

import re

from .errors import InvalidChannel

__all__ = ["CHANNEL_PATTERN", "InvalidChannel", "check_channel"]

CHANNEL_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def check_channel(name: str) -> str:
    """Return ``name`` if it is a valid channel name, else raise :class:`InvalidChannel`."""
    if not CHANNEL_PATTERN.fullmatch(name):
        raise InvalidChannel(
            "channel names are 1-128 characters of letters, digits and _ . : -"
        )
    return name
