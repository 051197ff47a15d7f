"""The control commands every process obeys, and how identities compare across processes."""

import pytest

from wsrelay import InvalidIdentity, WsrelayError
from wsrelay.control import DISCONNECT, UNSUBSCRIBE, Command, InvalidCommand, identity_key


def test_equal_identities_have_one_key_whatever_their_order_or_container():
    assert identity_key({"user": 7, "org": "a"}) == identity_key({"org": "a", "user": 7})
    assert identity_key(("ada", 1)) == identity_key(["ada", 1])
    assert identity_key("42") != identity_key(42)
    assert identity_key("ada") == '"ada"'


@pytest.mark.parametrize("identity", [object(), {1, 2}, float("nan"), b"ada"])
def test_an_identity_that_is_not_json_is_refused_saying_what_to_return(identity):
    with pytest.raises(InvalidIdentity, match="must be a JSON value") as refused:
        identity_key(identity)
    assert "user.id" in str(refused.value)
    assert isinstance(refused.value, WsrelayError) and isinstance(refused.value, TypeError)


def test_commands_travel_as_json_and_come_back_the_same():
    for command in (Command(DISCONNECT, '"ada"', "logged out"),
                    Command(UNSUBSCRIBE, "7", "left the room", "room-7")):
        assert Command.decode(command.encode()) == command


@pytest.mark.parametrize("payload", [
    b"not json", b"[]", b'{"op": "explode", "identity": "1", "reason": ""}',
    b'{"op": "disconnect", "identity": 1, "reason": ""}',
    b'{"op": "unsubscribe", "identity": "1", "reason": ""}',
    b'{"op": "unsubscribe", "identity": "1", "reason": "", "channel": "bad room"}',
    b'{"op": "disconnect", "identity": "1", "reason": "", "extra": 1}',
])
def test_anything_else_on_the_control_channel_is_refused(payload):
    with pytest.raises(InvalidCommand):
        Command.decode(payload)
