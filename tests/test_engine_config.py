"""Settings come from flags, then the TOML file, then DISTILL_* variables, then defaults."""

from __future__ import annotations

import argparse

import pytest

from distill.config import add_config_flag, option, resolve
from distill.errors import ConfigError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_config_flag(p)
    option(p, "--rpm", type=float)
    option(p, "--model")
    option(p, "--concurrency", type=int, default=64)
    option(p, "--quiet", action="store_true", default=False)
    return p


def test_flag_beats_file_beats_environment_beats_default(tmp_path):
    config = tmp_path / "d.toml"
    config.write_text('[run]\nrpm = 600\nmodel = "from-file"\n')
    env = {"DISTILL_RPM": "1", "DISTILL_MODEL": "from-env", "DISTILL_QUIET": "true"}
    args = resolve(parser().parse_args(["--config", str(config), "--rpm", "900"]), "run", env)
    assert (args.rpm, args.model, args.concurrency, args.quiet) == (900.0, "from-file", 64, True)
    args = resolve(parser().parse_args([]), "run", {"DISTILL_CONCURRENCY": "8"})
    assert args.concurrency == 8 and args.rpm is None and args.quiet is False


def test_only_the_commands_table_applies(tmp_path):
    config = tmp_path / "d.toml"
    config.write_text('[eval]\nmodel = "other"\n')
    args = resolve(parser().parse_args(["--config", str(config)]), "run", {})
    assert args.model is None


@pytest.mark.parametrize(
    "text, env, message",
    [
        ("[run]\nrpm = 'fast'\n", {}, "rpm in the \\[run\\] table"),
        ("", {"DISTILL_CONCURRENCY": "many"}, "DISTILL_CONCURRENCY"),
        ("[run\n", {}, "not valid TOML"),
        ("", {"DISTILL_QUIET": "perhaps"}, "DISTILL_QUIET must be true or false"),
    ],
)
def test_bad_settings_name_where_they_came_from(tmp_path, text, env, message):
    config = tmp_path / "d.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        resolve(parser().parse_args(["--config", str(config)]), "run", env)


def test_a_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="--config"):
        resolve(parser().parse_args(["--config", str(tmp_path / "none.toml")]), "run", {})


def test_a_command_specific_variable_beats_the_shared_one():
    env = {"DISTILL_MODEL": "teacher", "DISTILL_RUN_MODEL": "run-only"}
    assert resolve(parser().parse_args([]), "run", env).model == "run-only"
    assert resolve(parser().parse_args([]), "eval", env).model == "teacher"
