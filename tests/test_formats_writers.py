"""Writers: the messages line, and the llama2 text against Meta's published template rendered with jinja2."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2.sandbox import ImmutableSandboxedEnvironment

from distill.conversation import Conversation, Message
from formats import templates
from formats.readers import open_reader
from formats.writers import WRITERS, open_writer
from formats.writers.base import RenderError, encode_line
from formats.writers.llama2 import parse_llama2, render_llama2

FIXTURES = Path(__file__).parent / "fixtures" / "formats"

# meta-llama/Llama-2-7b-chat-hf tokenizer_config.json, "chat_template", as the JSON source text.
LLAMA2_CONFIG_VALUE = (
    "\"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
    "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
    "loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\\\n' + system_message + "
    "'\\\\n<</SYS>>\\\\n\\\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if "
    "message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] "
    "== 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}\""
)


def _raise_exception(message: str):
    raise jinja2.TemplateError(message)


@lru_cache
def published_template(name: str) -> jinja2.Template:
    """A packaged template compiled the way transformers compiles chat templates, independently of our writers."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(templates.load(name))


def jinja_llama2(messages: list[dict]) -> str:
    template = published_template("llama2-chat.jinja")
    return template.render(messages=messages, bos_token="<s>", eos_token="</s>", add_generation_prompt=False)


def conv(*pairs: tuple[str, str], weights: list[int | None] | None = None) -> Conversation:
    weights = weights or [None] * len(pairs)
    return Conversation(id="c", messages=[Message(r, c, w) for (r, c), w in zip(pairs, weights, strict=True)])


def test_registered_writers() -> None:
    assert {"messages", "llama2"} <= set(WRITERS.names())


def test_packaged_llama2_template_is_metas_string() -> None:
    assert templates.load("llama2-chat.jinja") == json.loads(LLAMA2_CONFIG_VALUE)


def test_llama2_known_rendering() -> None:
    c = conv(
        ("system", "Be kind."),
        ("user", " Hi "),
        ("assistant", "Hello!\n"),
        ("user", "Bye"),
        ("assistant", "Ciao"),
    )
    # the template strips the system block and the first user turn together: " Hi" keeps its leading space
    expected = (
        "<s>[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\n Hi [/INST] Hello! </s><s>[INST] Bye [/INST] Ciao </s>"
    )
    assert open_writer("llama2").render(c) == {"text": expected}
    assert jinja_llama2([m.to_dict() for m in c.messages]) == expected


def test_messages_writer_writes_messages_only_with_weights_where_given() -> None:
    c = conv(("system", "s"), ("user", "u"), ("assistant", "a"), weights=[None, 0, 1])
    c.meta["gold"] = ["x"]
    assert open_writer("messages").render(c) == {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u", "weight": 0},
            {"role": "assistant", "content": "a", "weight": 1},
        ]
    }


def test_llama2_refuses_what_the_template_refuses() -> None:
    bad = [
        conv(("assistant", "a"), ("user", "u")),
        conv(("system", "s"), ("assistant", "a")),
        conv(("user", "u"), ("user", "v")),
    ]
    for c in bad:
        with pytest.raises(RenderError, match="must alternate"):
            render_llama2(c.messages)
        with pytest.raises(jinja2.TemplateError, match="must alternate"):
            jinja_llama2([m.to_dict() for m in c.messages])
    with pytest.raises(RenderError):
        render_llama2([])


@pytest.mark.parametrize(
    "fixture",
    [
        "sharegpt_fastchat_dummy_slice.json",
        "sharegpt_dialogstudio_example.json",
        "messages_together_coqa_slice.jsonl",
    ],
)
def test_llama2_equals_jinja_on_real_conversations(fixture: str) -> None:
    path = FIXTURES / fixture
    writer = open_writer("llama2")
    for c in open_reader(path).read(path):
        assert writer.render(c)["text"] == jinja_llama2([m.to_dict() for m in c.messages])


def test_encode_line_is_compact_utf8_and_survives_lone_surrogates() -> None:
    assert encode_line({"text": "é\n"}) == '{"text":"é\\n"}\n'.encode()
    assert encode_line({"text": "a\ud800b"}) == '{"text":"a\ufffdb"}\n'.encode()


# Hypothesis: any text, including whitespace at the ends, markers and non-ASCII.
any_text = st.lists(
    st.one_of(
        st.text(st.characters(codec="utf-8"), max_size=5),
        st.sampled_from(["[INST]", " [/INST]", "</s>", "<s>"]),
    ),
    max_size=5,
).map("".join)


@st.composite
def chat(draw, text=any_text, min_turns: int = 1) -> list[Message]:
    n = draw(st.integers(min_turns, 7))
    messages = [Message("system", draw(text))] if draw(st.booleans()) else []
    messages += [Message("user" if i % 2 == 0 else "assistant", draw(text)) for i in range(n)]
    return messages


@settings(max_examples=400, deadline=None)
@given(messages=chat())
def test_llama2_matches_the_template_on_any_conversation(messages: list[Message]) -> None:
    assert render_llama2(messages) == jinja_llama2([m.to_dict() for m in messages])


@settings(max_examples=200, deadline=None)
@given(roles=st.lists(st.sampled_from(["system", "user", "assistant"]), min_size=1, max_size=6))
def test_llama2_accepts_and_refuses_exactly_what_the_template_does(roles: list[str]) -> None:
    messages = [Message(r, f"t{i}") for i, r in enumerate(roles)]
    try:
        expected = jinja_llama2([m.to_dict() for m in messages])
    except jinja2.TemplateError:
        with pytest.raises(RenderError):
            render_llama2(messages)
        return
    assert render_llama2(messages) == expected


# Text that round-trips: no surrounding whitespace, no markers.
plain_text = (
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_characters="[]<>/\u200b\ufeff"), min_size=1, max_size=20
    )
    .map(str.strip)
    .filter(bool)
)


@settings(max_examples=300, deadline=None)
@given(messages=chat(text=plain_text))
def test_llama2_text_round_trips_to_messages(messages: list[Message]) -> None:
    assert parse_llama2(render_llama2(messages)) == messages


@settings(max_examples=200, deadline=None)
@given(
    messages=chat(text=plain_text), weights=st.lists(st.sampled_from([None, 0, 1]), min_size=8, max_size=8)
)
def test_messages_line_round_trips_through_the_messages_reader(
    tmp_path_factory: pytest.TempPathFactory, messages: list[Message], weights
) -> None:
    messages = [
        Message(m.role, m.content, w if m.role != "system" else None)
        for m, w in zip(messages, weights, strict=False)
    ]
    path = tmp_path_factory.mktemp("rt") / "out.jsonl"
    path.write_bytes(encode_line(open_writer("messages").render(Conversation(id="c", messages=messages))))
    (back,) = open_reader(path).read(path)
    assert back.messages == messages
