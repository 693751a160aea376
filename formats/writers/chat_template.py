"""Rendering Hugging Face chat templates the way ``transformers`` does.

The environment mirrors ``transformers``' ``apply_chat_template``: an immutable sandbox with ``trim_blocks`` and
``lstrip_blocks``, the ``loopcontrols`` extension, a ``{% generation %}`` block (rendered as its body), a
``tojson`` filter that keeps non-ASCII, and the globals ``raise_exception`` and ``strftime_now``. Templates are
rendered with ``messages`` (role/content dicts), ``bos_token``, ``eos_token`` and ``add_generation_prompt``.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, NoReturn

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from distill.conversation import Conversation
from distill.errors import UsageError

from .base import RenderError


class _GenerationBlock(Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text for masking; rendering keeps the body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    """The sandboxed Jinja environment chat templates are rendered in."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=32)
def compile_template(source: str, where: str = "the chat template") -> jinja2.Template:
    """Compile ``source``; a syntax error is a :class:`UsageError` naming ``where``."""
    try:
        return environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise UsageError(f"{where} is not a valid Jinja template: {e.message} (line {e.lineno})") from None


def render(
    template: jinja2.Template,
    messages: list[dict[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = False,
) -> str:
    """Render ``messages`` through ``template``; a template's own error is a :class:`RenderError`."""
    try:
        return template.render(
            messages=messages,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
    except jinja2.TemplateError as e:
        raise RenderError(f"the chat template refused the conversation: {e}") from None


def message_dicts(conversation: Conversation) -> list[dict[str, Any]]:
    """The conversation as the role/content dicts templates expect (weights left out)."""
    return [{"role": m.role, "content": m.content} for m in conversation.messages]
