"""The one loader of every option: the same parsing for the environment, a mapping, app.config
and a file, and one line naming the option for whatever is wrong."""

import pytest

from wsrelay.config import DEFAULTS, OPTIONS, ConfigError, from_environ, load, validate


def test_every_option_has_a_default_and_help():
    for option in OPTIONS:
        assert option.name.startswith("WSRELAY_")
        assert option.help
        assert option.parse(option.default) == option.default  # a default passes its parser


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


def test_a_mapping_is_read_as_the_environment_would_be():
    """app.config strings: one origin (not its characters), '0' off, '2048' a number."""
    values = load({
        "WSRELAY_ALLOWED_ORIGINS": "https://app.example.com",
        "WSRELAY_REQUIRE_TOKEN": "0", "WSRELAY_MAX_MESSAGE_SIZE": "2048",
        "WSRELAY_LIMITS_EXEMPT": ["10.0.0.1", "::1"], "SECRET_KEY": "the host's own",
    }, environ={})
    assert values["WSRELAY_ALLOWED_ORIGINS"] == ("https://app.example.com",)
    assert values["WSRELAY_REQUIRE_TOKEN"] is False
    assert values["WSRELAY_MAX_MESSAGE_SIZE"] == 2048
    assert values["WSRELAY_LIMITS_EXEMPT"] == ("10.0.0.1", "::1")
    assert "SECRET_KEY" not in values
    assert load(values, environ={}) == values  # parsed values read back as themselves


def test_the_mapping_wins_over_the_environment_and_the_environment_over_the_file(tmp_path):
    file = tmp_path / "wsrelay.toml"
    file.write_text('WSRELAY_HISTORY_SIZE = 7\nWSRELAY_POLL_TIMEOUT = 3\n'
                    'WSRELAY_ALLOWED_HOSTS = ["a.example"]\n')
    environ = {"WSRELAY_CONFIG_FILE": str(file), "WSRELAY_POLL_TIMEOUT": "4"}
    values = load({"WSRELAY_ALLOWED_HOSTS": "b.example"}, environ=environ)
    assert values["WSRELAY_HISTORY_SIZE"] == 7
    assert values["WSRELAY_POLL_TIMEOUT"] == 4.0
    assert values["WSRELAY_ALLOWED_HOSTS"] == ("b.example",)


@pytest.mark.parametrize(
    "name,value", [("WSRELAY_HISTORY_SIZE", "-1"), ("WSRELAY_HISTORY_SIZE", "lots"),
                   ("WSRELAY_WORKERS_CHECK", "maybe"), ("WSRELAY_PING_TIMEOUT", "0"),
                   ("WSRELAY_HISTORY_TTL", "nan"), ("WSRELAY_PING_INTERVAL", "inf"),
                   ("WSRELAY_ALLOWED_ORIGINS", "app.example"),   # no scheme: not an origin
                   ("WSRELAY_ALLOWED_ORIGINS", "https://app.example/path"),
                   ("WSRELAY_LIMITS_EXEMPT", "proxy.local"),     # not an IP address
                   ("WSRELAY_BROKER_URL", "redis://localhost:6379/zero"),
                   ("WSRELAY_BROKER_URL", "kafka://x"),
                   ("WSRELAY_URL_PREFIX", "realtime/")]
)
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=name) as info:
        from_environ({name: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name,value", [("WSRELAY_HISTORY_SIZE", 2.5), ("WSRELAY_HISTORY_SIZE", True),
                   ("WSRELAY_REQUIRE_TOKEN", 2), ("WSRELAY_ALLOWED_ORIGINS", [1]),
                   ("WSRELAY_SECRET_KEY", b"bytes"), ("WSRELAY_PING_INTERVAL", "0.0")]
)
def test_values_of_the_wrong_type_fail_at_start(name, value):
    with pytest.raises(ConfigError, match=f"^{name}="):
        load({name: value}, environ={})


def test_an_unknown_name_fails_with_the_closest_option():
    with pytest.raises(ConfigError, match="did you mean WSRELAY_HISTORY_SIZE"):
        load({"WSRELAY_HISTORY_SIZ": 5}, environ={})
    with pytest.raises(ConfigError, match=r"WSRELAY_ALOWED_ORIGINS.*environment.*did you mean "
                                           r"WSRELAY_ALLOWED_ORIGINS"):
        load(environ={"WSRELAY_ALOWED_ORIGINS": "https://a.example"})


def test_secrets_never_appear_in_errors():
    with pytest.raises(ConfigError) as info:
        load({"WSRELAY_BROKER_URL": "redis://:hunter2@db.example/x"}, environ={})
    assert "hunter2" not in str(info.value) and "***" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load({"WSRELAY_ADMIN_TOKEN": 12345678}, environ={})
    assert "12345678" not in str(info.value)


def test_a_config_file_that_is_missing_or_not_toml_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"WSRELAY_CONFIG_FILE=.*No such file"):
        load(environ={"WSRELAY_CONFIG_FILE": str(tmp_path / "nothing.toml")})
    broken = tmp_path / "broken.toml"
    broken.write_text("WSRELAY_HISTORY_SIZE = = 3\n")
    with pytest.raises(ConfigError, match="not TOML"):
        load(environ={"WSRELAY_CONFIG_FILE": str(broken)})


def test_validate_refuses_impossible_combinations():
    validate(DEFAULTS)
    with pytest.raises(ConfigError, match="SUBSCRIBER_BUFFER"):
        validate({**DEFAULTS, "WSRELAY_SUBSCRIBER_BUFFER": DEFAULTS["WSRELAY_MAX_MESSAGE_SIZE"]})


def test_production_needs_a_secret_and_the_allowed_hosts():
    production = {**DEFAULTS, "WSRELAY_ENV": "production", "WSRELAY_SECRET_KEY": "k" * 32}
    with pytest.raises(ConfigError, match="WSRELAY_ALLOWED_HOSTS"):
        validate(production)
    validate({**production, "WSRELAY_ALLOWED_HOSTS": ("relay.example",)})
    validate({**DEFAULTS, "WSRELAY_ENV": "development"})  # development: the loopback default
