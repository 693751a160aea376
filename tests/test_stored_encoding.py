"""A conversation's stored form is canonical JSON: a rerun compares it byte for byte with what it reads back."""

from __future__ import annotations

import orjson
import pytest

from distill.conversation import Conversation, Message
from distill.stored import decode_conversation, encode_conversation


def canonical(conversation: Conversation) -> bytes:
    data = {"messages": [m.to_dict() for m in conversation.messages], "meta": conversation.meta}
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


@pytest.mark.parametrize("meta", [{}, {"zeta": 1, "alpha": {"b": [1, 2], "a": "é"}}])
@pytest.mark.parametrize("weights", [(None, None, None), (None, 0, 1)])
def test_the_stored_form_is_sorted_json_and_reads_back(meta, weights):
    roles = ("system", "user", "assistant")
    messages = [Message(role, f"{role} text ✓", weight) for role, weight in zip(roles, weights, strict=True)]
    conversation = Conversation("c1", messages, "in.jsonl:1", meta)
    data = encode_conversation(conversation)
    assert data == canonical(conversation)
    assert decode_conversation("c1", "in.jsonl:1", data) == conversation
