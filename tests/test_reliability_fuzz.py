"""Issue 6, property 7: whatever bytes come in, the readers and ``distill check`` give a result or a clean
:class:`~distill.errors.DistillError`, never a traceback.

Hypothesis builds files that are nearly right (every key a reader looks at, with values of every JSON type, text
with lone surrogates, zero-width spaces, NUL and line breaks, integers beyond 64 bits, NaN) in each layout (JSONL,
a JSON list, one object) and raw bytes. What comes out must also be usable downstream: every conversation can be
stored in the cache, turned into teacher requests, written by the ``messages`` writer and pass ``distill check``;
every reject can be written to the rejects file.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill import plan
from distill.conversation import ROLES, Conversation, Reject
from distill.errors import DistillError
from distill.settings import RunSettings
from distill.stored import decode_conversation, encode_conversation
from formats.check import check_file
from formats.readers import READERS, ReaderOptions, detect
from formats.readers.normalise import ROLE_ALIASES
from formats.rejects import reject_line
from formats.writers import open_writer
from formats.writers.base import encode_line

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SETTINGS = RunSettings(model="teacher", base_url="http://127.0.0.1:1/v1")

nasty_char = st.sampled_from(
    ["\ud800", "\udfff", "\u200b", "\ufeff", "\x00", "\n", "\r", " ", "\t", "é", "\U0001f600"]
)
any_text = st.text(alphabet=st.one_of(st.characters(), nasty_char), max_size=12)
text = st.one_of(st.text(alphabet=st.one_of(st.characters(), nasty_char), min_size=1, max_size=12), any_text)
leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
)
json_value = st.recursive(
    leaf, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(text, kids, max_size=3), max_leaves=8
)


def mostly(usual: st.SearchStrategy, *unusual: st.SearchStrategy) -> st.SearchStrategy:
    """``usual`` seven times in eight, else one of ``unusual``: files nearly right reach deeper than noise does."""
    return st.integers(0, 7).flatmap(lambda n: usual if n else st.one_of(*unusual))


texts = mostly(text, st.sampled_from(["hello", "  ", ""]), json_value)
ids = st.one_of(text, st.integers(-(2**70), 2**70), json_value)
roles = mostly(
    st.sampled_from(["user", "assistant", "human", "gpt", "system"]),
    st.sampled_from([*ROLE_ALIASES, "Human", " GPT ", "narrator", ""]),
    json_value,
)


def record(*required: str, **fields) -> st.SearchStrategy:
    """Objects with the ``required`` fields and any subset of the others (each drawn from its strategy); now and
    then an object with any subset, or any JSON value at all."""
    core = {name: fields[name] for name in required}
    rest = {name: value for name, value in fields.items() if name not in core}
    return mostly(
        st.fixed_dictionaries(core, optional=rest), st.fixed_dictionaries({}, optional=fields), json_value
    )


def listed(item: st.SearchStrategy) -> st.SearchStrategy:
    return mostly(st.lists(item, min_size=1, max_size=5), st.lists(item, max_size=5), json_value)


part = st.one_of(
    text,
    record(
        "text", type=st.one_of(st.sampled_from(["text", "image_url"]), json_value), text=texts, value=texts
    ),
)
weights = st.one_of(st.sampled_from([0, 1, 2, 0.0, 1.0, True, "1", None]), json_value)
RECORDS = {
    "sharegpt": record(
        "conversations",
        id=ids,
        system=texts,
        conversations=listed(
            record("from", "value", **{"from": roles, "value": texts, "role": roles, "content": texts})
        ),
        items=listed(record(**{"from": roles, "value": texts})),
    ),
    "messages": record(
        "messages",
        id=ids,
        messages=listed(
            record(
                "role",
                "content",
                role=roles,
                content=st.one_of(texts, st.lists(part, max_size=3)),
                weight=weights,
                tool_calls=json_value,
            )
        ),
    ),
    "coqa": record(
        "story",
        "questions",
        "answers",
        id=ids,
        story=texts,
        questions=listed(st.one_of(texts, record("input_text", input_text=texts, turn_id=st.integers(0, 5)))),
        answers=st.one_of(
            listed(st.one_of(texts, record("input_text", input_text=texts, turn_id=st.integers(0, 5)))),
            record("input_text", input_text=listed(texts)),
        ),
        additional_answers=st.dictionaries(
            text, listed(st.one_of(texts, record(input_text=texts))), max_size=2
        ),
    ),
    "booksum": record(
        "chapter",
        id=ids,
        chapter=texts,
        summary_text=texts,
        summary=texts,
        book_id=json_value,
        summary_id=json_value,
        bid=json_value,
        chapter_path=texts,
        source=texts,
        summary_path=json_value,
    ),
    "hints": record(
        "question",
        "answer",
        "hints",
        id=ids,
        question=st.one_of(texts, record("question", question=texts)),
        answer=st.one_of(
            texts, record("answer", answer=texts), st.lists(record("answer", answer=texts), max_size=2)
        ),
        hints=listed(st.one_of(texts, record("hint", hint=texts))),
        Question=texts,
        ExactAnswer=texts,
        Hints=listed(texts),
        Q_ID=ids,
    ),
}
OPTIONS = {
    "sharegpt": st.fixed_dictionaries({}, optional={"tools": st.sampled_from(["drop", "keep", "reject"])}),
    "messages": st.fixed_dictionaries({}, optional={"tools": st.sampled_from(["drop", "keep", "reject"])}),
    "coqa": st.fixed_dictionaries({}, optional={"prompt": st.sampled_from(["Q about {story}", "no story"])}),
    "booksum": st.fixed_dictionaries(
        {},
        optional={
            "context_window": st.sampled_from(["12", "40"]),
            "overflow": st.sampled_from(["skip", "truncate"]),
        },
    ),
    "hints": st.fixed_dictionaries({}, optional={"num_hints": st.sampled_from(["1", "3"])}),
}


def serialise(records: list, layout: str, ascii_only: bool) -> bytes:
    def dump(value, indent=None) -> bytes:
        text_ = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
        return text_.encode("utf-8", "surrogatepass")  # lone surrogates as the bytes a careless writer leaves

    if layout == "jsonl":
        return b"".join(dump(r) + b"\n" for r in records)
    if layout == "list":
        return dump(records, indent=1)
    return dump(records[0] if records else {}, indent=2)


def assert_usable(conversation: Conversation) -> None:
    """Everything the engine and the writers do with a conversation works on this one."""
    assert isinstance(conversation.id, str) and conversation.id
    conversation.id.encode("utf-8")  # stored in the cache as UTF-8
    conversation.source.encode("utf-8")
    stored = encode_conversation(conversation)
    assert decode_conversation(conversation.id, conversation.source, stored).messages == conversation.messages
    roles_ = [m.role for m in conversation.messages]
    assert set(roles_) <= set(ROLES) and "system" not in roles_[1:]
    body = [r for r in roles_ if r != "system"]
    assert body and body[0] == "user" and all(a != b for a, b in zip(body, body[1:], strict=False))
    assert all(isinstance(m.content, str) and m.content.strip() for m in conversation.messages)
    turns = plan.turn_count(conversation, SETTINGS)
    assert turns >= 1
    plan.request_for(conversation, SETTINGS, 0)  # the first teacher request can be built and keyed
    done = plan.distilled(conversation, SETTINGS, [f"answer {k}" for k in range(turns)])
    return encode_line(open_writer("messages").render(done))


@FUZZ
@given(
    data=st.data(),
    reader=st.sampled_from(sorted(RECORDS)),
    layout=st.sampled_from(["jsonl", "jsonl", "list", "object"]),
    ascii_only=st.booleans(),
)
def test_any_near_miss_file_gives_usable_conversations_and_writable_rejects(
    tmp_path, data, reader, layout, ascii_only
):
    records = data.draw(st.lists(RECORDS[reader], max_size=5), label="records")
    options = data.draw(OPTIONS[reader], label="options")
    path = tmp_path / ("in.jsonl" if layout == "jsonl" else "in.json")
    path.write_bytes(serialise(records, layout, ascii_only))
    try:
        out = list(READERS.get(reader)(ReaderOptions(extra=options)).read(path))
    except DistillError:
        return  # a file the reader cannot read at all: a clean, one-line error
    lines = []
    for item in out:
        assert isinstance(item, Conversation | Reject), item
        assert item.source.startswith(path.name)
        if isinstance(item, Reject):
            assert isinstance(item.reason, str) and item.reason
            json.loads(reject_line(item))  # the rejects file can hold it
        else:
            lines.append(assert_usable(item))
    if lines:
        written = tmp_path / "out.jsonl"
        written.write_bytes(b"".join(lines))
        report = check_file(written)
        assert report.ok, report.format()  # what the writer wrote from any input passes distill check


@FUZZ
@given(
    raw=st.binary(max_size=400),
    name=st.sampled_from(["in.jsonl", "in.json"]),
    reader=st.sampled_from(sorted(RECORDS)),
)
def test_any_bytes_give_records_or_a_clean_error_from_every_reader_and_from_detection(
    tmp_path, raw, name, reader
):
    path = tmp_path / name
    path.write_bytes(raw)
    with contextlib.suppress(DistillError):
        detect(path)
    try:
        out = list(READERS.get(reader)().read(path))
    except DistillError:
        return
    for item in out:
        if isinstance(item, Reject):
            json.loads(reject_line(item))
        else:
            assert_usable(item)


message = record(
    role=st.one_of(st.sampled_from(["system", "user", "assistant"]), roles),
    content=st.one_of(texts, st.lists(part, max_size=2)),
    weight=weights,
)
fine_tuning_line = st.one_of(
    record(messages=listed(message)),
    record(text=texts),
    record(prompt=texts, completion=texts),
    record(
        input=record(messages=listed(message)),
        preferred_output=listed(message),
        non_preferred_output=listed(message),
    ),
    record(messages=listed(message), text=texts, extra=json_value),
)


@FUZZ
@given(
    lines=st.lists(
        st.one_of(fine_tuning_line.map(lambda v: json.dumps(v).encode()), st.binary(max_size=40)), max_size=6
    ),
    bom=st.booleans(),
    max_seq_length=st.sampled_from([None, 1, 50]),
)
def test_distill_check_reports_on_any_file_and_never_raises_anything_else(
    tmp_path, lines, bom, max_seq_length
):
    path = tmp_path / "train.jsonl"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + b"\n".join(lines))
    try:
        report = check_file(path, max_seq_length=max_seq_length)
    except DistillError:
        return
    assert report.ok == (report.problem_count == 0)
    assert isinstance(report.format(), str)
    orjson.dumps(report.to_dict())  # --json can print it
    assert all(0 <= p.line <= path.read_bytes().count(b"\n") + 1 for p in report.problems)


def test_distill_check_as_a_command_on_hostile_files(tmp_path):
    files = {
        "binary.jsonl": bytes(range(256)) * 4,
        "deep.jsonl": b"[" * 5000 + b"]" * 5000 + b"\n",
        "surrogates.jsonl": b'{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "x"}]}\n',
        "huge_int.jsonl": b'{"text": 123456789012345678901234567890}\n',
        "empty.jsonl": b"",
    }
    for n, (name, raw) in enumerate(files.items()):
        (tmp_path / name).write_bytes(raw)
        extra = ["--json"] if n % 2 else []
        result = subprocess.run(
            [sys.executable, "-m", "distill", "check", str(tmp_path / name), *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (name, result.stderr)
    directory = subprocess.run(
        [sys.executable, "-m", "distill", "check", str(tmp_path)], capture_output=True, text=True
    )
    assert directory.returncode == 2 and "Traceback" not in directory.stderr
