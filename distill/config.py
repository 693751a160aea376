"""Settings from flags, a TOML file and environment variables, in that order of precedence.

Every sub-command option can also be set in a TOML file (``--config FILE``, else ``distill.toml`` in the current
directory when there is one) under a table named after the command, with the flag's name as the key::

    [run]
    model = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
    base-url = "https://api.together.xyz/v1"
    rpm = 600

or in the environment as ``DISTILL_<COMMAND>_<FLAG>`` (``DISTILL_TRAIN_MODEL``) or, for every command,
``DISTILL_<FLAG>`` (``DISTILL_BASE_URL``, ``DISTILL_RPM``). A flag given on the command line always wins. Options are declared with :func:`option` so argparse leaves them unset (None) and
:func:`resolve` can tell "not given" from "given the default".
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .suggest import nearest

DEFAULT_CONFIG = Path("distill.toml")
_DEFAULTS = "_distill_defaults"


def option(parser: argparse.ArgumentParser, *flags: str, default: Any = None, **kwargs: Any) -> None:
    """Add an option whose value may also come from the TOML file or the environment."""
    action = parser.add_argument(*flags, default=None, **kwargs)
    defaults = parser.get_default(_DEFAULTS) or {}
    defaults[action.dest] = (flags[0], default, kwargs.get("type"), kwargs.get("action"))
    parser.set_defaults(**{_DEFAULTS: defaults})


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="TOML file of settings (default: ./distill.toml if present)"
    )


def resolve(
    args: argparse.Namespace, command: str, environ: dict[str, str] | None = None
) -> argparse.Namespace:
    """Fill every option not given as a flag from the TOML file, then the environment, then its default."""
    environ = os.environ if environ is None else environ
    table = _toml_table(getattr(args, "config", None), command)
    declared = getattr(args, _DEFAULTS, None) or {}
    _check_keys(table, command, [flag.lstrip("-") for flag, *_ in declared.values()], args)
    for dest, (flag, default, convert, action) in declared.items():
        if getattr(args, dest) is not None:
            continue
        name = flag.lstrip("-")
        env_names = [f"DISTILL_{command}_{name}", f"DISTILL_{name}"]
        env_name = next((e for e in (n.upper().replace("-", "_") for n in env_names) if e in environ), None)
        if name in table:
            value = _convert(table[name], convert, action, f"{name} in the [{command}] table")
        elif env_name is not None:
            value = _convert(environ[env_name], convert, action, env_name)
        else:
            value = default
        setattr(args, dest, value)
    return args


def _check_keys(table: dict[str, Any], command: str, keys: list[str], args: argparse.Namespace) -> None:
    """A ConfigError naming the first key of ``table`` that is no flag of ``command``, and the nearest one."""
    for key in table:
        if key not in keys:
            path = getattr(args, "config", None) or DEFAULT_CONFIG
            close = nearest(key, keys)
            hint = (
                f"; did you mean {close!r}?" if close else f"; the keys are the flags of 'distill {command}'"
            )
            raise ConfigError(f"unknown key {key!r} in the [{command}] table of {path}{hint}")


def _toml_table(path: Path | None, command: str) -> dict[str, Any]:
    if path is None:
        if not DEFAULT_CONFIG.exists():
            return {}
        path = DEFAULT_CONFIG
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (--config)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    table = data.get(command, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{command}] in {path} must be a table")
    return table


def _convert(value: Any, convert: Callable | None, action: str | None, where: str) -> Any:
    if action in ("store_true", "store_false"):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if convert is None or not isinstance(value, str):
        return value
    try:
        return convert(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} has an invalid value {value!r}") from None
