"""The ``argparse`` parser every ``distill`` command uses: no prefix matching, and "did you mean" on a typo.

argparse accepts any unambiguous prefix of a flag by default (``--out`` for ``--output``, but also ``--re`` for
whichever ``--re...`` flag a later version does not add), which turns a typo into a different setting; here only
whole flags are accepted. An unknown flag, sub-command or choice is an error naming the nearest valid ones.
"""

from __future__ import annotations

import argparse
import re

from distill.suggest import did_you_mean

_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<value>[^']*)' \(choose from (?P<choices>.*)\)")


class DistillParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with ``allow_abbrev=False`` and suggestions for unknown flags and choices."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self._chosen_subparser(parsed) or self
            parser.error(unknown_arguments(extras, parser))
        return parsed

    def error(self, message: str):  # type: ignore[override]
        match = _INVALID_CHOICE.search(message)
        if match:
            choices = re.findall(r"'([^']*)'", match["choices"])
            message += did_you_mean(match["value"], choices)
        super().error(message)

    def _chosen_subparser(self, parsed: argparse.Namespace) -> argparse.ArgumentParser | None:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = getattr(parsed, action.dest, None)
                return action.choices.get(chosen) if chosen else None
        return None


def unknown_arguments(extras: list[str], parser: argparse.ArgumentParser) -> str:
    """``unrecognized arguments: ...`` with the nearest flag of ``parser`` for each unknown one."""
    flags = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
    hints = []
    for extra in extras:
        if extra.startswith("-"):
            name = extra.split("=", 1)[0]
            hint = did_you_mean(name, flags)
            if hint:
                hints.append(f"{name}{hint}")
    message = f"unrecognized arguments: {' '.join(extras)}"
    return message + (f"; {'; '.join(hints)}" if hints else "")
