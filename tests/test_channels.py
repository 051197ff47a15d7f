import pytest

from wsrelay.channels import InvalidChannel, check_channel


@pytest.mark.parametrize("name", ["a", "room-1", "A.b:c_d-e", "x" * 128, "0"])
def test_valid_names_pass(name):
    assert check_channel(name) == name


@pytest.mark.parametrize(
    "name", ["", "x" * 129, "a b", "a/b", "é", "a\nb", "a?b", "a%20b", "a\x00"]
)
def test_invalid_names_are_refused(name):
    with pytest.raises(InvalidChannel):
        check_channel(name)
