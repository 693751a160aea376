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
from distill.errors import UsageError
from formats import templates
from formats.readers import open_reader
from formats.writers import WRITERS, open_writer
from formats.writers.base import RenderError, encode_line
from formats.writers.llama2 import parse_llama2, render_llama2
from formats.writers.llama3 import parse_llama3, render_llama3

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
    assert set(WRITERS.names()) >= {"messages", "llama2", "llama3", "prompt-completion", "template"}


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


# --- llama3, template:FILE, prompt-completion -----------------------------------------------------------------

# meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json, "chat_template", as the JSON source text.
LLAMA3_CONFIG_VALUE = (
    "\"{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\\\n\\\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\\\\n\\\\n' }}{% endif %}\""
)


def jinja_llama3(messages: list[dict]) -> str:
    template = published_template("llama3-instruct.jinja")
    return template.render(messages=messages, bos_token="<|begin_of_text|>", add_generation_prompt=False)


def test_packaged_llama3_template_is_metas_string() -> None:
    assert templates.load("llama3-instruct.jinja") == json.loads(LLAMA3_CONFIG_VALUE)


def test_llama3_known_rendering() -> None:
    c = conv(("system", "Be kind."), ("user", " Hi "), ("assistant", "Hello!"))
    assert open_writer("llama3").render(c) == {
        "text": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe kind.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
    }


@settings(max_examples=300, deadline=None)
@given(messages=chat())
def test_llama3_matches_the_template_on_any_conversation(messages: list[Message]) -> None:
    assert render_llama3(messages) == jinja_llama3([m.to_dict() for m in messages])


@settings(max_examples=200, deadline=None)
@given(messages=chat(text=plain_text))
def test_llama3_text_round_trips_to_messages(messages: list[Message]) -> None:
    assert parse_llama3(render_llama3(messages)) == messages


def test_hints_conversations_in_llama3_equal_the_jinja_rendering() -> None:
    path = FIXTURES / "hints_wikihint_slice.json"
    for c in open_reader(path).read(path):
        assert open_writer("llama3").render(c)["text"] == jinja_llama3([m.to_dict() for m in c.messages])


def write_config(folder: Path, template: str | list, bos, eos) -> Path:
    path = folder / "tokenizer_config.json"
    path.write_text(
        json.dumps({"chat_template": template, "bos_token": bos, "eos_token": eos}), encoding="utf-8"
    )
    return path


def test_template_writer_from_a_tokenizer_config_equals_the_llama2_writer(tmp_path: Path) -> None:
    added = {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": True, "rstrip": False}
    config = write_config(tmp_path, templates.load("llama2-chat.jinja"), added, "</s>")
    writer = open_writer(f"template:{config}")
    path = FIXTURES / "sharegpt_dialogstudio_example.json"
    for c in open_reader(path).read(path):
        assert writer.render(c) == open_writer("llama2").render(c)


def test_template_writer_from_a_jinja_file_takes_tokens_from_the_config_beside_it(tmp_path: Path) -> None:
    jinja = tmp_path / "chat.jinja"
    jinja.write_text(templates.load("llama3-instruct.jinja"), encoding="utf-8")
    plain = open_writer(f"template:{jinja}")
    c = conv(("user", "Hi"), ("assistant", "Yo"))
    assert plain.render(c)["text"] == render_llama3(c.messages, bos="")
    write_config(tmp_path, None, "<|begin_of_text|>", "<|eot_id|>")
    assert open_writer(f"template:{jinja}").render(c) == open_writer("llama3").render(c)


def test_template_writer_runs_transformers_style_templates(tmp_path: Path) -> None:
    # ChatML with whitespace control, a {% generation %} block, loop controls, tojson and raise_exception
    source = (
        "{% for message in messages %}\n"
        "{% if message['role'] == 'system' and not loop.first %}{{ raise_exception('system only first') }}{% endif %}\n"
        "{% if message['role'] == 'assistant' %}"
        "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] }}{% endgeneration %}{{ '<|im_end|>\\n' }}"
        "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}\n"
        "{% if loop.index > 3 %}{% break %}{% endif %}\n"
        "{% endfor %}{{ {'n': messages | length, 'é': 1} | tojson }}"
    )
    config = write_config(
        tmp_path, [{"name": "tool_use", "template": "x"}, {"name": "default", "template": source}], "", ""
    )
    writer = open_writer(f"template:{config}")
    c = conv(("user", "Hi"), ("assistant", "Yo"))
    assert writer.render(c)["text"] == (
        '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n{"n": 2, "é": 1}'
    )
    with pytest.raises(RenderError, match="system only first"):
        writer.render(conv(("user", "Hi"), ("system", "late")))


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("template", "needs a file"),
        ("template:/nonexistent/chat.jinja", "cannot read"),
        ("unknown-format", "choose one of"),
    ],
)
def test_template_writer_usage_errors(spec: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        open_writer(spec)


def test_template_writer_reports_a_broken_template(tmp_path: Path) -> None:
    jinja = tmp_path / "broken.jinja"
    jinja.write_text("{% for m in messages %}{{ m.content }", encoding="utf-8")
    with pytest.raises(UsageError, match="not a valid Jinja template"):
        open_writer(f"template:{jinja}")
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"bos_token": "<s>"}), encoding="utf-8")
    with pytest.raises(UsageError, match="no 'chat_template'"):
        open_writer(f"template:{config}")


def test_prompt_completion_writes_single_turn_conversations_only() -> None:
    writer = open_writer("prompt-completion")
    assert writer.render(conv(("user", "Q"), ("assistant", "A"))) == {"prompt": "Q", "completion": "A"}
    assert writer.render(conv(("system", "S"), ("user", "Q"), ("assistant", "A"))) == {
        "prompt": "S\n\nQ",
        "completion": "A",
    }
    with pytest.raises(RenderError, match="--output-format messages"):
        writer.render(conv(("user", "Q"), ("assistant", "A"), ("user", "Q2"), ("assistant", "A2")))
    with pytest.raises(RenderError):
        writer.render(conv(("user", "Q")))
