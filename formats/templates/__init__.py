"""Chat templates shipped with distill, exactly as published in the models' ``tokenizer_config.json``.

* ``llama2-chat.jinja``: ``chat_template`` of meta-llama/Llama-2-7b-chat-hf (bos ``<s>``, eos ``</s>``).
* ``llama3-instruct.jinja``: ``chat_template`` of meta-llama/Meta-Llama-3-8B-Instruct (bos ``<|begin_of_text|>``).

The files hold the template strings byte for byte (JSON escapes undone, no trailing newline).
"""

from __future__ import annotations

from importlib.resources import files


def load(name: str) -> str:
    """The text of the packaged template ``name`` (e.g. ``"llama2-chat.jinja"``)."""
    return files(__name__).joinpath(name).read_text(encoding="utf-8")
