"""The README is part of the product: its commands and option list must stay true."""

import re
from pathlib import Path

from wsrelay.config import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_serve_and_test_commands():
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    assert README.startswith("```sh\n")
    serve, test = blocks[0].strip(), blocks[1].strip()
    assert "manage.py serve" in serve
    assert "pytest" in test
    assert test in (ROOT / ".ci" / "run").read_text(), ".ci/run runs the README's test command"


def test_every_option_is_documented_with_its_default():
    for option in OPTIONS:
        row = re.search(rf"^\| `{option.name}` \| (.*?) \|", README, re.M)
        assert row, f"{option.name} missing from the README"
        default = option.default
        if isinstance(default, bool):
            default = int(default)
        if isinstance(default, float) and default.is_integer():
            default = int(default)
        if isinstance(default, tuple) and default:
            default = " ".join(default)
        if default in ("", ()):
            assert "empty" in row.group(1)
        else:
            assert f"`{default}`" in row.group(1), f"{option.name}: default {default}"
