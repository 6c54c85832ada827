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
            assert p.help and p.help.strip(), f"{name} {p.opts} has no help"
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


def _one_clean_error(r, exit_code: int, starts: str):
    """Click's usage errors (exit 2) end with one `Error:` line; library errors (exit 1) are that line."""
    assert r.exit_code == exit_code, r.output
    assert isinstance(r.exception, SystemExit), repr(r.exception)  # nothing escaped as a traceback
    last = r.output.strip().splitlines()[-1]
    assert last.startswith(f"Error: {starts}"), r.output
    if exit_code == 1:
        assert r.output.strip() == last
    return last


FAST = ["--backbone", "resnet18", "--weights", "none", "--image-size", "32"]


@pytest.mark.parametrize("args,option,value", [
    (["extract", *FAST], "--workers", "-1"),
    (["fit-head", *FAST], "--workers", "-1"),
    (["predict", "--head", "h.npz"], "--workers", "-1"),
    (["extract", *FAST], "--batch-size", "0"),
    (["predict", "--head", "h.npz"], "--batch-size", "-4"),
    (["extract", *FAST], "--flush-rows", "0"),
    (["extract", *FAST], "--flush-every", "-1.5"),
    (["extract", *FAST], "--augment", "-1"),
    (["extract", "--backbone", "resnet18"], "--image-size", "0"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_out_of_range_numbers_are_usage_errors(image_folder, tmp_path, args, option, value):
    r = CliRunner().invoke(cli, [*args, "--data", str(image_folder), "--cache", str(tmp_path / "c"), option, value])
    last = _one_clean_error(r, 2, f"Invalid value for '{option}': {value} is not in the range")
    assert "x>=" in last
    assert not (tmp_path / "c").exists()


def test_results_limit_must_be_positive(tmp_path):
    r = CliRunner().invoke(cli, ["results", "--limit", "0", "--cache", str(tmp_path / "c")])
    _one_clean_error(r, 2, "Invalid value for '--limit': 0 is not in the range x>=1")


def test_cache_below_a_file_is_a_usage_error(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    r = CliRunner().invoke(cli, ["cache", "ls", "--cache", str(tmp_path / "afile" / "cache")])
    _one_clean_error(r, 2, f"Invalid value for '--cache': '{tmp_path / 'afile' / 'cache'}': "
                           f"'{tmp_path / 'afile'}' is a file, not a folder")
    monkeypatch.setenv("FEATCACHE_CACHE", str(tmp_path / "afile" / "deeper" / "cache"))
    r = CliRunner().invoke(cli, ["cache", "ls"])
    _one_clean_error(r, 2, "Invalid value for '--cache'")


def test_os_errors_are_one_line_naming_the_path(tmp_path, monkeypatch):
    long = tmp_path / ("x" * 300)  # longer than any file system's name limit
    r = CliRunner().invoke(cli, ["cache", "ls", "--cache", str(long)])
    last = _one_clean_error(r, 1, f"'{long}")
    assert "File name too long (OSError); choose a shorter path" in last

    from featcache.store.featureset import FeatureStore

    def denied(self):
        raise PermissionError(13, "Permission denied", "/srv/store/features")

    monkeypatch.setattr(FeatureStore, "sets", denied)
    r = CliRunner().invoke(cli, ["cache", "ls", "--cache", str(tmp_path / "c")])
    last = _one_clean_error(r, 1, "'/srv/store/features': Permission denied (PermissionError)")
    assert last.endswith("fix the permissions or choose another path")


def test_other_exceptions_are_not_hidden(tmp_path, monkeypatch):
    from featcache.store.featureset import FeatureStore

    def bug(self):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(FeatureStore, "sets", bug)
    r = CliRunner().invoke(cli, ["cache", "ls", "--cache", str(tmp_path / "c")])
    assert isinstance(r.exception, RuntimeError)


def test_bad_csv_is_one_clean_line(tmp_path):
    (tmp_path / "bad.csv").write_bytes(b"path,label\nx.png,caf\xe9\n")
    r = CliRunner().invoke(cli, ["extract", "--data", str(tmp_path / "bad.csv"), *FAST, "--workers", "0",
                                 "--cache", str(tmp_path / "c")])
    _one_clean_error(r, 1, f"CSV file '{tmp_path / 'bad.csv'}' is not UTF-8: byte 0xe9")


def test_the_command_prints_a_warning_as_one_line(monkeypatch):
    import sys
    import warnings

    from featcache import cli as cli_module
    from featcache.cli import main

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    monkeypatch.setattr(sys, "argv", ["featcache", "--help"])
    monkeypatch.setattr(cli_module, "exit_process", sys.exit)  # not os._exit: this is pytest's process
    with pytest.raises(SystemExit) as ended:
        main()
    assert ended.value.code == 0
    assert warnings.formatwarning("slow here", RuntimeWarning, "engine.py", 3) == "warning (RuntimeWarning): slow here\n"
