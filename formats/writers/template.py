"""``template:FILE``: ``{"text": ...}`` rendered with any Hugging Face chat template, to target one's own student.

``FILE`` is either a model's ``tokenizer_config.json`` (its ``chat_template``, the ``default`` one when it holds
several, and its ``bos_token``/``eos_token``) or a Jinja file holding the template; for a Jinja file the bos and
eos tokens are read from a ``tokenizer_config.json`` beside it, when there is one, else they are empty.
The template is rendered as ``transformers`` renders it (see :mod:`formats.writers.chat_template`), without a
generation prompt; a template that raises (``raise_exception``) refuses that conversation with a RenderError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.conversation import Conversation
from distill.errors import UsageError

from .base import WRITERS, Writer
from .chat_template import compile_template, message_dicts, render


@WRITERS.register("template")
class TemplateWriter(Writer):
    """Writes each conversation as ``{"text": ...}`` through a user-supplied chat template."""

    name = "template"

    def __init__(self, argument: str | None = None) -> None:
        super().__init__(argument)
        if not argument:
            raise UsageError("--output-format template needs a file: template:PATH/TO/chat_template.jinja")
        source, self.bos_token, self.eos_token = load_chat_template(Path(argument))
        self.template = compile_template(source, f"--output-format template:{argument}")

    def render(self, conversation: Conversation) -> dict[str, Any]:
        text = render(
            self.template, message_dicts(conversation), bos_token=self.bos_token, eos_token=self.eos_token
        )
        return {"text": text}


def load_chat_template(path: Path) -> tuple[str, str, str]:
    """``(template source, bos token, eos token)`` from a tokenizer config or a Jinja file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--output-format template:{path}: cannot read the file ({e})") from None
    if path.suffix.lower() == ".json":
        return _from_config(path, text)
    config = path.with_name("tokenizer_config.json")
    bos = eos = ""
    if config.is_file():
        _, bos, eos = _from_config(config, config.read_text(encoding="utf-8"), need_template=False)
    return text, bos, eos


def _from_config(path: Path, text: str, need_template: bool = True) -> tuple[str, str, str]:
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--output-format template:{path}: not valid JSON ({e.msg})") from None
    if not isinstance(config, dict):
        raise UsageError(f"--output-format template:{path}: expected a tokenizer_config.json object")
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if need_template and not isinstance(template, str):
        raise UsageError(f"--output-format template:{path}: no 'chat_template' string in it")
    return template or "", _token(config.get("bos_token")), _token(config.get("eos_token"))


def _token(value: Any) -> str:
    if isinstance(value, dict):  # an AddedToken as serialised by tokenizers
        value = value.get("content")
    return value if isinstance(value, str) else ""
