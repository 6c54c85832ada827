"""Every CLI command: has help text, is documented in the README, renders errors as one line."""
from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from featcache.cli import cli

README = (Path(__file__).parents[1] / "README.md").read_text()


def all_commands(group: click.Group = cli, prefix: str = ""):
    for name, cmd in group.commands.items():
        full = f"{prefix}{name}"
        yield full, cmd
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, full + " ")


@pytest.mark.parametrize("name,cmd", list(all_commands()), ids=lambda x: x if isinstance(x, str) else "")
def test_command_has_help_and_is_in_readme(name, cmd):
    assert cmd.help and len(cmd.help.strip()) > 10
    assert re.search(rf"featcache {re.escape(name)}\b", README), f"`featcache {name}` is not in the README"
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden and p.name != "help":
            assert p.help or p.is_flag is False, f"{name} {p.opts} has no help"
    r = CliRunner().invoke(cli, [*name.split(), "--help"])
    assert r.exit_code == 0 and "Usage:" in r.output


def test_errors_are_one_clean_line(tmp_path):
    r = CliRunner().invoke(cli, ["extract", "--data", str(tmp_path / "missing"), "--backbone", "resnet18",
                                 "--weights", "none", "--cache", str(tmp_path / "c")])
    assert r.exit_code == 1
    assert r.output.startswith("Error: data folder") and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["extract", "--data", "builtin:digits", "--backbone", "resnet51",
                                 "--cache", str(tmp_path / "c")])
    assert r.exit_code == 1 and "did you mean" in r.output


def test_extract_json_is_one_document(image_folder, tmp_path):
    args = ["extract", "--data", str(image_folder), "--backbone", "resnet18", "--weights", "none",
            "--image-size", "32", "--workers", "0", "--cache", str(tmp_path / "c"), "--json"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert {"view", "feature_key", "rows", "dim", "extracted", "reused", "timings"} <= set(doc)
    assert (doc["rows"], doc["dim"], doc["extracted"]) == (12, 512, 12)
    again = json.loads(CliRunner().invoke(cli, args).stdout)
    assert again["cache_hit"] and again["extracted"] == 0
    ls = json.loads(CliRunner().invoke(cli, ["cache", "ls", "--json", "--cache", str(tmp_path / "c")]).stdout)
    assert [x["key"] for x in ls] == [doc["feature_key"]] and ls[0]["rows"] == 12
    info = CliRunner().invoke(cli, ["cache", "info", doc["feature_key"][:12], "--cache", str(tmp_path / "c")])
    assert "rows: 12" in info.output
