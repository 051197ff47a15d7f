"""What a WebSocket's messages may do, without sockets: the per-connection policy."""

from wsrelay.websocket.modes import Policy


def test_a_policy_remembers_only_a_few_channels():
    """A wsrelay.v1 connection's memory of allowed channels stays small however many it
    names; a forgotten channel is simply checked again."""
    checked: list[str] = []
    policy = Policy(lambda channel, action: checked.append(channel), None,
                    max_subscriptions=10)
    for n in range(300):
        policy.check(f"c{n}", "subscribe")
        policy.check(f"c{n}", "subscribe")
    assert len(checked) == 300  # each once while remembered
    assert len(policy._allowed) <= 20
    policy.check("c0", "subscribe")
    assert checked[-1] == "c0"
