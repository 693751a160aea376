"""The sharegpt and messages readers on real samples, messy data, broken files and random input."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill.conversation import Conversation, Reject
from distill.errors import InputError, UsageError
from formats.readers import ReaderOptions, detect, jsonstream, open_reader
from formats.readers.normalise import ROLE_ALIASES, BadRecord, Turn, build_messages, content_id

FIXTURES = Path(__file__).parent / "fixtures" / "formats"


def read_all(path: Path, fmt: str | None = None, **extra) -> list[Conversation | Reject]:
    reader = open_reader(path, fmt, ReaderOptions(extra=extra))
    return list(reader.read(path))


def assert_normalised(conv: Conversation) -> None:
    roles = [m.role for m in conv.messages]
    body = roles[1:] if roles and roles[0] == "system" else roles
    assert body and body[0] == "user"
    assert all(role == ("user" if i % 2 == 0 else "assistant") for i, role in enumerate(body)), roles
    assert all(m.content.strip() for m in conv.messages)
    assert all("\u200b" not in m.content for m in conv.messages)


@pytest.mark.parametrize(
    ("fixture", "fmt"),
    [
        ("sharegpt_fastchat_dummy_slice.json", "sharegpt"),
        ("sharegpt_dialogstudio_example.json", "sharegpt"),
        ("sharegpt_mlenergy_slice.json", "sharegpt"),
        ("sharegpt_venkat2811_slice.json", "sharegpt"),
        ("sharegpt_glaive_toolcall_slice.json", "sharegpt"),
        ("sharegpt_axolotl_conversation.json", "sharegpt"),
        ("sharegpt_axolotl_missingturns.json", "sharegpt"),
        ("messages_llamafactory_slice.jsonl", "messages"),
        ("messages_together_coqa_slice.jsonl", "messages"),
    ],
)
def test_real_samples_are_detected_and_read_normalised(fixture: str, fmt: str) -> None:
    path = FIXTURES / fixture
    assert detect(path) == fmt
    records = read_all(path)
    conversations = [r for r in records if isinstance(r, Conversation)]
    assert conversations
    for conv in conversations:
        assert_normalised(conv)
        assert conv.id
        assert conv.source.startswith(fixture)


def test_fastchat_list_keeps_ids_order_and_text() -> None:
    path = FIXTURES / "sharegpt_fastchat_dummy_slice.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    records = read_all(path)
    assert [r.id for r in records] == [item["id"] for item in raw]
    assert [r.source for r in records] == [f"{path.name}#{i}" for i in range(len(raw))]
    first = records[0]
    assert [m.content for m in first.messages] == [t["value"] for t in raw[0]["conversations"]]
    assert first.system is None


def test_jsonl_and_single_object_layouts_read_like_the_list(tmp_path: Path) -> None:
    raw = json.loads((FIXTURES / "sharegpt_fastchat_dummy_slice.json").read_text(encoding="utf-8"))
    jsonl = tmp_path / "conv.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in raw) + "\n\n", encoding="utf-8")
    from_list = read_all(FIXTURES / "sharegpt_fastchat_dummy_slice.json")
    from_jsonl = read_all(jsonl)
    assert [(c.id, c.messages) for c in from_jsonl] == [(c.id, c.messages) for c in from_list]
    assert [c.source for c in from_jsonl] == [f"conv.jsonl:{i}" for i in range(1, len(raw) + 1)]

    single = tmp_path / "one.json"
    single.write_text(json.dumps(raw[3], indent=2), encoding="utf-8")
    (conv,) = read_all(single)
    assert (conv.id, conv.source, conv.messages) == (raw[3]["id"], "one.json#0", from_list[3].messages)


def test_single_object_fixture_has_all_twelve_turns() -> None:
    (conv,) = read_all(FIXTURES / "sharegpt_axolotl_conversation.json")
    assert len(conv.messages) == 12
    assert conv.id.startswith("sha256:")  # the record has no id


def test_empty_assistant_turn_is_dropped_and_the_user_turns_merged() -> None:
    raw = json.loads((FIXTURES / "sharegpt_axolotl_missingturns.json").read_text(encoding="utf-8"))
    turns = raw["conversations"]
    assert turns[1] == {"from": "gpt", "value": ""}
    (conv,) = read_all(FIXTURES / "sharegpt_axolotl_missingturns.json")
    assert len(conv.messages) == 10
    assert conv.messages[0].content == turns[0]["value"] + "\n\n" + turns[2]["value"]
    assert conv.messages[1].content == turns[3]["value"]


def test_messy_sharegpt_rejects_what_has_no_user_turn_and_says_why() -> None:
    path = FIXTURES / "sharegpt_mlenergy_slice.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    records = read_all(path)
    assert len(records) == len(raw)
    by_id = {item["id"]: rec for item, rec in zip(raw, records, strict=True)}
    for rejected in ("v2k3qT7", "lMNQG8V", "EGkBhEb", "QOL3GJy", "JFizGxT", "5lXOVeW", "IXmHCvM"):
        rec = by_id[rejected]
        assert isinstance(rec, Reject), rejected
        assert "no user turn" in rec.reason
        assert rec.record["id"] == rejected  # the raw record goes to the rejects file
    kept = [r for r in records if isinstance(r, Conversation)]
    assert len(kept) == 6
    assert all(len(c.messages) == 1 and c.messages[0].role == "user" for c in kept)


def test_system_turn_becomes_the_system_prompt_and_option_overrides_it(tmp_path: Path) -> None:
    path = tmp_path / "sys.json"
    record = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
            {"from": "system", "value": "a banner in the middle"},
            {"from": "human", "value": "Bye"},
        ]
    }
    path.write_text(json.dumps([record]), encoding="utf-8")
    (conv,) = read_all(path)
    assert conv.system == "Be brief."
    assert [m.content for m in conv.messages] == ["Be brief.", "Hi", "Hello", "Bye"]
    reader = open_reader(path, "sharegpt", ReaderOptions(system_prompt="You are Llama."))
    (conv,) = reader.read(path)
    assert conv.system == "You are Llama."
    reader = open_reader(path, "sharegpt", ReaderOptions(system_prompt=""))
    (conv,) = reader.read(path)
    assert conv.system is None


def test_leading_gpt_turns_are_dropped_and_repeated_roles_merged(tmp_path: Path) -> None:
    path = tmp_path / "messy.jsonl"
    record = {
        "id": 7,
        "extra": {"ignored": True},
        "conversations": [
            {"from": "gpt", "value": "I start"},
            {"from": "human", "value": "one"},
            {"from": "human", "value": "\u200btwo"},
            {"from": "gpt", "value": "   "},
            {"from": "chatgpt", "value": "answer", "extra": 1},
            {"from": "bing", "value": "more"},
        ],
    }
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    (conv,) = read_all(path, "sharegpt")
    assert conv.id == "7"
    assert [(m.role, m.content) for m in conv.messages] == [
        ("user", "one\n\ntwo"),
        ("assistant", "answer\n\nmore"),
    ]


def test_unknown_role_rejects_the_record_and_names_the_role(tmp_path: Path) -> None:
    path = tmp_path / "roles.jsonl"
    good = {"conversations": [{"from": "human", "value": "hi"}]}
    bad = {"conversations": [{"from": "human", "value": "hi"}, {"from": "narrator", "value": "x"}]}
    path.write_text("\n".join(json.dumps(r) for r in (good, bad, good)) + "\n", encoding="utf-8")
    records = read_all(path, "sharegpt")
    assert [type(r) for r in records] == [Conversation, Reject, Conversation]
    assert records[1].source == "roles.jsonl:2"
    assert "'narrator'" in records[1].reason


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"conversations": [{"from": "human", "value": "hi"}', "invalid JSON"),
        ('["not", "an", "object"]', "expected a JSON object"),
        ('{"text": "no conversations"}', "no 'conversations' list"),
        ('{"conversations": ["a string turn"]}', "a turn must be a JSON object"),
        ('{"conversations": [{"value": "no from"}]}', "no 'from' key"),
        ('{"conversations": [{"from": "human", "value": 3}]}', "must be a string"),
        ('{"conversations": [{"from": 1, "value": "x"}]}', "role must be a string"),
    ],
)
def test_every_broken_jsonl_record_is_a_reject_and_the_rest_is_read(
    tmp_path: Path, line: str, reason: str
) -> None:
    path = tmp_path / "broken.jsonl"
    good = json.dumps({"conversations": [{"from": "human", "value": "hi"}]})
    path.write_text(f"{good}\n{line}\n{good}\n", encoding="utf-8")
    records = read_all(path, "sharegpt")
    assert [type(r) for r in records] == [Conversation, Reject, Conversation]
    assert records[1].source == "broken.jsonl:2"
    assert reason in records[1].reason


def test_invalid_utf8_line_is_a_reject(tmp_path: Path) -> None:
    path = tmp_path / "bytes.jsonl"
    good = json.dumps({"conversations": [{"from": "human", "value": "hi"}]}).encode()
    path.write_bytes(
        good + b"\n" + b'{"conversations": [{"from": "human", "value": "\xff"}]}\n' + good + b"\n"
    )
    records = read_all(path, "sharegpt")
    assert [type(r) for r in records] == [Conversation, Reject, Conversation]
    assert "UTF-8" in records[1].reason


def test_lone_surrogate_escape_is_replaced_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "surrogate.jsonl"
    path.write_text('{"conversations": [{"from": "human", "value": "a\\ud83d b"}]}\n', encoding="utf-8")
    (conv,) = read_all(path, "sharegpt")
    assert conv.messages[0].content == "a\ufffd b"


def test_broken_json_list_yields_items_before_the_error_then_one_reject(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    item = json.dumps({"conversations": [{"from": "human", "value": "hi"}]})
    path.write_text(f'[{item}, {item}, {{"conversations": [}}, {item}]', encoding="utf-8")
    records = read_all(path, "sharegpt")
    assert [type(r) for r in records] == [Conversation, Conversation, Reject]
    assert records[2].source == "broken.json#2"
    assert "everything after it" in records[2].reason


def test_unclosed_list_and_trailing_data(tmp_path: Path) -> None:
    item = json.dumps({"conversations": [{"from": "human", "value": "hi"}]})
    unclosed = tmp_path / "unclosed.json"
    unclosed.write_text(f"[{item}, {item}", encoding="utf-8")
    assert [type(r) for r in read_all(unclosed, "sharegpt")] == [Conversation, Conversation, Reject]
    trailing = tmp_path / "trailing.json"
    trailing.write_text(
        json.dumps({"conversations": [{"from": "human", "value": "hi"}]}, indent=1) + "\n]x", "utf-8"
    )
    assert [type(r) for r in read_all(trailing, "sharegpt")] == [Conversation, Reject]


def test_empty_file_and_empty_list_have_no_records(tmp_path: Path) -> None:
    for text in ("", "  \n", "[]", " [ \n ] "):
        path = tmp_path / "empty.json"
        path.write_text(text, encoding="utf-8")
        assert read_all(path, "sharegpt") == []


def test_a_file_that_is_not_json_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(InputError, match="not JSON"):
        read_all(path, "sharegpt")
    with pytest.raises(UsageError, match="--format"):
        detect(path)


def test_tool_turns_follow_the_tools_option() -> None:
    path = FIXTURES / "sharegpt_glaive_toolcall_slice.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    with_tools = [
        i for i, r in enumerate(raw) if any(t["from"] == "function_call" for t in r["conversations"])
    ]
    assert with_tools
    dropped = read_all(path)
    kept = read_all(path, tools="keep")
    rejected = read_all(path, tools="reject")
    i = with_tools[0]
    calls = [t["value"] for t in raw[i]["conversations"] if t["from"] in ("function_call", "observation")]
    assert not any(c in m.content for c in calls for m in dropped[i].messages)
    assert all(any(c in m.content for m in kept[i].messages) for c in calls)
    assert_normalised(kept[i])
    assert isinstance(rejected[i], Reject) and "tools=reject" in rejected[i].reason
    assert all(isinstance(rejected[j], Conversation) for j in range(len(raw)) if j not in with_tools)
    with pytest.raises(UsageError, match="tools="):
        read_all(path, tools="maybe")


def test_conversation_id_comes_from_id_keys_else_content_hash() -> None:
    venkat = read_all(FIXTURES / "sharegpt_venkat2811_slice.json")
    raw = json.loads((FIXTURES / "sharegpt_venkat2811_slice.json").read_text(encoding="utf-8"))
    assert [c.id for c in venkat] == [r["conversation_id"] for r in raw]
    (axolotl,) = read_all(FIXTURES / "sharegpt_axolotl_conversation.json")
    assert axolotl.id == content_id([m.to_dict() for m in axolotl.messages])
    assert read_all(FIXTURES / "sharegpt_axolotl_conversation.json")[0].id == axolotl.id


def test_messages_reader_reads_text_parts_and_loss_weights() -> None:
    path = FIXTURES / "messages_llamafactory_slice.jsonl"
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    records = read_all(path)
    assert len(records) == len(raw)
    first = records[0]
    assert [(m.role, m.content, m.weight) for m in first.messages] == [
        (m["role"], m["content"][0]["value"], int(m["loss_weight"])) for m in raw[0]["messages"]
    ]
    assert first.source == f"{path.name}:1"


def test_messages_reader_keeps_the_story_system_prompt() -> None:
    path = FIXTURES / "messages_together_coqa_slice.jsonl"
    raw = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    conv = read_all(path)[0]
    assert conv.system.startswith("Read the story and extract answers for the questions.\nStory: ")
    assert [m.to_dict() for m in conv.messages] == raw["messages"]


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "'image_url'"),
        ([{"role": "user", "content": "hi", "weight": 0.5}], "weight must be 0 or 1"),
        ([{"role": "user", "content": "hi", "weight": True}], "weight must be 0 or 1"),
        ([{"role": "user", "content": {"text": "hi"}}], "'content' must be"),
        ([{"role": "critic", "content": "hi"}], "unknown role"),
        ([{"content": "hi"}], "no 'role'"),
        ([{"role": "assistant", "content": "only me"}], "no user turn"),
        ("not a list", "no 'messages' list"),
    ],
)
def test_messages_reader_rejects_what_it_cannot_use(tmp_path: Path, messages, reason: str) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"messages": messages}) + "\n", encoding="utf-8")
    (rec,) = read_all(path, "messages")
    assert isinstance(rec, Reject)
    assert reason in rec.reason


def test_messages_reader_text_parts_weights_and_tool_calls(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    record = {
        "id": "c1",
        "messages": [
            {"role": "developer", "content": "rules"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, "b", {"type": "text", "text": "c"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]},
            {"role": "tool", "content": "42"},
            {"role": "assistant", "content": "It is 42.", "weight": 1},
        ],
    }
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    (dropped,) = read_all(path, "messages")
    assert [m.to_dict() for m in dropped.messages] == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "abc"},
        {"role": "assistant", "content": "It is 42.", "weight": 1},
    ]
    (kept,) = read_all(path, "messages", tools="keep")
    assert [m.role for m in kept.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert '"name": "f"' in kept.messages[2].content


def test_detection_tells_the_formats_apart_and_reports_ambiguity(tmp_path: Path) -> None:
    both = tmp_path / "both.jsonl"
    both.write_text(
        json.dumps(
            {
                "messages": [{"role": "user", "content": "x"}],
                "conversations": [{"from": "human", "value": "x"}],
            }
        )
        + "\n",
        encoding="utf-8",
    )
    with pytest.raises(UsageError, match="pass --format"):
        detect(both)
    # a first record bigger than the sniffed head is still recognised by its keys
    big = tmp_path / "big.json"
    big.write_text(
        json.dumps([{"conversations": [{"from": "human", "value": "x" * 200_000}]}]), encoding="utf-8"
    )
    assert detect(big) == "sharegpt"
    (conv,) = read_all(big)
    assert len(conv.messages[0].content) == 200_000


def test_one_long_jsonl_line_is_not_mistaken_for_a_single_object(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    line = json.dumps({"messages": [{"role": "user", "content": "y" * 100_000}]})
    path.write_text(line + "\n" + line + "\n", encoding="utf-8")
    records = read_all(path, "messages")
    assert [r.source for r in records] == ["long.jsonl:1", "long.jsonl:2"]


def test_json_list_is_streamed_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonstream, "CHUNK_CHARS", 64 * 1024)
    path = tmp_path / "large.json"
    item = {"conversations": [{"from": "human", "value": "q" * 500}, {"from": "gpt", "value": "a" * 500}]}
    with open(path, "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(json.dumps(dict(item, id=f"c{i}")) for i in range(4000)) + "\n]")
    size = path.stat().st_size
    assert size > 4_000_000
    tracemalloc.start()
    count = sum(1 for _ in open_reader(path, "sharegpt").read(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 4000
    assert peak < size / 4


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30)
)
json_value = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(json_value, max_size=8), chunk=st.integers(1, 64), indent=st.sampled_from([None, 0, 2]))
def test_list_stream_decodes_what_json_load_decodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, items, chunk: int, indent
) -> None:
    monkeypatch.setattr(jsonstream, "CHUNK_CHARS", chunk)
    path = tmp_path / "items.json"
    path.write_text(json.dumps(items, indent=indent, ensure_ascii=False), encoding="utf-8")
    values = list(jsonstream.iter_values(path))
    assert [v for _, v in values] == items
    assert [s for s, _ in values] == [f"items.json#{i}" for i in range(len(items))]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_any_bytes_give_records_rejects_or_an_input_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.json"
    path.write_bytes(data)
    for fmt in ("sharegpt", "messages"):
        try:
            records = read_all(path, fmt)
        except InputError:
            continue
        assert all(isinstance(r, Conversation | Reject) for r in records)


roles = st.sampled_from(sorted(ROLE_ALIASES) + ["Human", "GPT"])
texts = st.text(alphabet=st.sampled_from(["a", "b", " ", "\n", "\u200b", "é", "\ud800"]), max_size=6)


@settings(max_examples=300, deadline=None)
@given(turns=st.lists(st.tuples(roles, texts, st.sampled_from([None, 0, 1])), max_size=10))
def test_clean_up_always_yields_the_normalised_shape_or_a_reason(turns) -> None:
    try:
        messages = build_messages([Turn(r, t, w) for r, t, w in turns], tools="keep")
    except BadRecord as e:
        assert "no user turn" in str(e)
        return
    assert_normalised(Conversation(id="x", messages=messages))
    assert all("\ud800" not in m.content for m in messages)
