import pytest

from wsrelay.config import DEFAULTS, OPTIONS, ConfigError, from_environ, validate


def test_every_option_has_a_default_and_help():
    for option in OPTIONS:
        assert option.name.startswith("WSRELAY_")
        assert option.help


def test_environment_values_are_parsed():
    values = from_environ({
        "WSRELAY_HISTORY_SIZE": "50",
        "WSRELAY_ALLOWED_ORIGINS": "https://A.example:443, https://b http://[::1]:80/ *",
        "WSRELAY_ALLOWED_HOSTS": "relay.example, .example.com",
        "WSRELAY_PING_INTERVAL": "2.5", "WSRELAY_WORKERS_CHECK": "off", "UNRELATED": "x",
    })
    assert values == {
        "WSRELAY_HISTORY_SIZE": 50,
        # as browsers send them, so that the origin check and CORS agree
        "WSRELAY_ALLOWED_ORIGINS": ("https://a.example", "https://b", "http://[::1]", "*"),
        "WSRELAY_ALLOWED_HOSTS": ("relay.example", ".example.com"),
        "WSRELAY_PING_INTERVAL": 2.5,
        "WSRELAY_WORKERS_CHECK": False,
    }


@pytest.mark.parametrize(
    "name,value", [("WSRELAY_HISTORY_SIZE", "-1"), ("WSRELAY_HISTORY_SIZE", "lots"),
                   ("WSRELAY_WORKERS_CHECK", "maybe"), ("WSRELAY_PING_TIMEOUT", "0"),
                   ("WSRELAY_HISTORY_TTL", "nan"), ("WSRELAY_PING_INTERVAL", "inf"),
                   ("WSRELAY_ALLOWED_ORIGINS", "app.example"),   # no scheme: not an origin
                   ("WSRELAY_ALLOWED_ORIGINS", "https://app.example/path")]
)
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        from_environ({name: value})


def test_validate_refuses_impossible_combinations():
    validate(DEFAULTS)
    with pytest.raises(ConfigError, match="SUBSCRIBER_BUFFER"):
        validate({**DEFAULTS, "WSRELAY_SUBSCRIBER_BUFFER": DEFAULTS["WSRELAY_MAX_MESSAGE_SIZE"]})
    with pytest.raises(ConfigError, match="scheme"):
        validate({**DEFAULTS, "WSRELAY_BROKER_URL": "kafka://x"})



def test_production_needs_a_secret_and_the_allowed_hosts():
    production = {**DEFAULTS, "WSRELAY_ENV": "production", "WSRELAY_SECRET_KEY": "k" * 32}
    with pytest.raises(ConfigError, match="WSRELAY_ALLOWED_HOSTS"):
        validate(production)
    validate({**production, "WSRELAY_ALLOWED_HOSTS": ("relay.example",)})
    validate({**DEFAULTS, "WSRELAY_ENV": "development"})  # development: the loopback default
