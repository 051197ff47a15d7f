"""Tokens and the access rule, without sockets: issue, verify, tamper, expire, grant."""

import base64
import hashlib

import pytest
from itsdangerous import URLSafeSerializer

from wsrelay.auth import PUBLISH, SUBSCRIBE, Tokens, authorize, needs_token
from wsrelay.errors import ApiError

SECRET = "a-test-secret-that-is-long-enough-for-production"
NOW = 1_800_000_000.0


@pytest.fixture
def tokens() -> Tokens:
    return Tokens(SECRET)


def refusal(call, *args, **kwargs) -> tuple[int, str]:
    with pytest.raises(ApiError) as refused:
        call(*args, **kwargs)
    return refused.value.status, refused.value.code


def test_a_token_carries_its_pattern_rights_and_expiry(tokens):
    claims = tokens.verify(tokens.issue("private-team-*", ttl=60, now=NOW), now=NOW)
    assert (claims.channel, claims.publish, claims.expires) == ("private-team-*", False, NOW + 60)
    assert tokens.verify(tokens.issue("x", publish=True, now=NOW), now=NOW).publish is True


def test_the_pattern_is_a_glob_and_subscribe_is_always_granted(tokens):
    reader = tokens.verify(tokens.issue("private-team-*", now=NOW), now=NOW)
    assert reader.grants("private-team-a", SUBSCRIBE)
    assert not reader.grants("private-team-a", PUBLISH)
    assert not reader.grants("private-teamb", SUBSCRIBE)
    assert not reader.grants("private-other", SUBSCRIBE)
    assert not reader.grants("PRIVATE-TEAM-a", SUBSCRIBE)  # case matters, as in channel names
    writer = tokens.verify(tokens.issue("room.[ab]", publish=True, now=NOW), now=NOW)
    assert writer.grants("room.a", PUBLISH) and writer.grants("room.b", SUBSCRIBE)
    assert not writer.grants("room.c", SUBSCRIBE)


def test_expiry_is_exact_and_no_ttl_means_forever(tokens):
    token = tokens.issue("c", ttl=10, now=NOW)
    assert tokens.verify(token, now=NOW + 9.9).expires == NOW + 10
    assert refusal(tokens.verify, token, now=NOW + 10) == (401, "token_expired")
    assert tokens.verify(tokens.issue("c", ttl=None, now=NOW), now=NOW + 10**9).expires is None


def _flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


def test_any_change_to_a_token_makes_it_invalid(tokens):
    token = tokens.issue("private-a", now=NOW)
    payload, signature = token.split(".")
    forged_payload = base64.urlsafe_b64encode(b'{"ch":"*","pub":true}').rstrip(b"=").decode()
    for bad in (
        _flip(token, 3),                       # a claim changed
        _flip(token, len(token) - 2),          # the signature changed
        token[:-1],                            # cut short
        f"{forged_payload}.{signature}",       # another payload under the old signature
        payload,                               # no signature at all
        "not a token", "..", "é",
    ):
        assert refusal(tokens.verify, bad, now=NOW) == (401, "invalid_token"), bad


def test_keys_and_salt_separate_tokens(tokens):
    assert refusal(Tokens("another key").verify, tokens.issue("c"), now=None) == (
        401, "invalid_token",
    )
    # Data signed with the same key for another purpose (here Flask's session salt) is no token.
    other_use = URLSafeSerializer(SECRET, salt="cookie-session").dumps({"ch": "*", "pub": True})
    assert refusal(tokens.verify, other_use) == (401, "invalid_token")


def test_without_a_secret_each_process_has_its_own_random_key():
    one, two = Tokens.from_config(""), Tokens.from_config("")
    assert one.verify(one.issue("c")).channel == "c"
    assert refusal(two.verify, one.issue("c")) == (401, "invalid_token")


@pytest.mark.parametrize("pattern", ["", "bad channel", "a/b", "é", "x" * 129])
def test_a_bad_pattern_is_refused_at_issue(tokens, pattern):
    with pytest.raises(ValueError, match="pattern"):
        tokens.issue(pattern)


@pytest.mark.parametrize("ttl", [0, -1, -5.0, float("nan"), float("inf"), float("-inf"),
                                 True, "60"])
def test_a_ttl_must_be_finite_and_positive(tokens, ttl):
    with pytest.raises(ValueError, match="ttl"):
        tokens.issue("c", ttl=ttl)


@pytest.mark.parametrize("exp", [float("nan"), float("inf"), "1e400", "nan", True, None, [1]])
def test_a_token_whose_expiry_is_not_a_finite_time_is_invalid(tokens, exp):
    """Signed with the right key (an older version, or a bug, could have issued it): a NaN
    or infinite expiry would never pass, so the token is refused as malformed."""
    forged = tokens._serializer.dumps({"ch": "c", "pub": False, "exp": exp})
    assert refusal(tokens.verify, forged, now=NOW) == (401, "invalid_token")


def test_a_token_may_name_its_subject(tokens):
    """The subject (a user, a service) is signed like the grant; without one there is none."""
    claims = tokens.verify(tokens.issue("c", subject="user-42", now=NOW), now=NOW)
    assert claims.subject == "user-42"
    assert tokens.verify(tokens.issue("c", now=NOW), now=NOW).subject is None
    for bad in ("", "x" * 201):
        with pytest.raises(ValueError, match="subject"):
            tokens.issue("c", subject=bad)
    signer = URLSafeSerializer(SECRET, salt="wsrelay.channel-token",
                               signer_kwargs={"digest_method": hashlib.sha256})
    for bad in (42, "", None, ["a"]):  # signed with the key, yet not a subject
        assert refusal(tokens.verify, signer.dumps({"ch": "c", "pub": False, "sub": bad})) == (
            401, "invalid_token")


# -- authorize: the rule every transport applies ---------------------------------------------

def test_private_channels_and_require_token_decide_who_needs_one():
    assert needs_token("private-x", require_token=False)
    assert not needs_token("public", require_token=False)
    assert not needs_token("privatex", require_token=False)
    assert needs_token("public", require_token=True)


def test_public_channels_stay_open_without_a_token(tokens):
    access = authorize(tokens, None, "lobby", PUBLISH, require_token=False, now=NOW)
    assert (access.channel, access.claims, access.may_publish, access.expires) == (
        "lobby", None, True, None,
    )


def test_a_needed_token_must_be_there_and_grant_the_action(tokens):
    def check(token, channel="private-a", action=SUBSCRIBE, require_token=False):
        return authorize(tokens, token, channel, action, require_token=require_token, now=NOW)

    assert refusal(check, None) == (401, "token_required")
    assert refusal(check, None, "lobby", require_token=True) == (401, "token_required")
    reader = tokens.issue("private-*", ttl=30, now=NOW)
    access = check(reader)
    assert access.may_publish is False and access.expires == NOW + 30
    assert access.claims.channel == "private-*"
    assert refusal(check, reader, action=PUBLISH) == (403, "forbidden")
    assert refusal(check, tokens.issue("private-b", publish=True, now=NOW)) == (403, "forbidden")
    writer = check(tokens.issue("private-a", publish=True, now=NOW), action=PUBLISH)
    assert writer.may_publish is True


def test_a_shown_token_is_checked_even_where_none_is_needed(tokens):
    assert refusal(
        authorize, tokens, "garbage", "lobby", SUBSCRIBE, require_token=False, now=NOW
    ) == (401, "invalid_token")
    expired = tokens.issue("lobby", ttl=1, now=NOW - 5)
    assert refusal(
        authorize, tokens, expired, "lobby", SUBSCRIBE, require_token=False, now=NOW
    ) == (401, "token_expired")
    # Valid but for other channels: the public channel stays open, and does not expire with it.
    access = authorize(
        tokens, tokens.issue("private-*", ttl=5, now=NOW), "lobby", PUBLISH,
        require_token=False, now=NOW,
    )
    assert access.may_publish is True and access.expires is None
    assert access.claims.channel == "private-*"  # for the connect hook to see


def test_refusals_ask_for_a_bearer_token(tokens):
    with pytest.raises(ApiError) as refused:
        authorize(tokens, None, "private-a", SUBSCRIBE, require_token=False)
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert "token" in refused.value.message
