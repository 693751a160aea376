"""The local teacher's answers, usage, validation, auth and counters, over real HTTP on loopback."""

from __future__ import annotations

import hashlib
import json
import re

import aiohttp
import pytest
import together

from distill import tokens
from distill.errors import UsageError
from distill.servers.teacher import TeacherKnobs, TeacherServer, chat_answer, prompt_answer, request_hash


def spec_digest(messages: list[dict]) -> str:
    """The history hash as the module documents it, computed independently of the server's code."""
    pairs = [[m["role"], m["content"]] for m in messages]
    data = json.dumps(pairs, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.blake2b(data, digest_size=4).hexdigest()


async def post(session: aiohttp.ClientSession, url: str, body, headers: dict | None = None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(url, data=data, headers=headers or {}) as response:
        return response.status, response.headers, await response.read()


def chat(messages: list[dict], **params) -> dict:
    return {"model": "teacher-70b", "messages": messages, **params}


HISTORY = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": "What is the capital of France, and why is it that city rather than another?",
    },
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]


async def test_chat_answer_is_deterministic_and_names_the_last_turn_and_history():
    async with TeacherServer() as server, aiohttp.ClientSession() as session:
        url = server.base_url + "/chat/completions"
        first = json.loads((await post(session, url, chat(HISTORY)))[2])
        again = json.loads((await post(session, url, chat(HISTORY, temperature=0.7)))[2])
        other = json.loads(
            (await post(session, url, chat([*HISTORY[:2], {**HISTORY[2], "content": "Lyon."}, HISTORY[3]])))[
                2
            ]
        )
    content = first["choices"][0]["message"]["content"]
    assert content == f"Answer to: And of Italy? [{spec_digest(HISTORY)}]"
    assert content == chat_answer(HISTORY)
    assert again["choices"][0]["message"]["content"] == content
    assert other["choices"][0]["message"]["content"] != content  # a different history, a different hash
    assert first["object"] == "chat.completion" and first["model"] == "teacher-70b"
    assert (
        first["choices"][0]["finish_reason"] == "stop"
        and first["choices"][0]["message"]["role"] == "assistant"
    )


async def test_answer_keeps_only_the_first_60_characters_of_the_last_user_turn():
    long_turn = "x" * 59 + "yz and more"
    messages = [{"role": "user", "content": long_turn}]
    assert chat_answer(messages) == f"Answer to: {'x' * 59}y [{spec_digest(messages)}]"


async def test_usage_counts_prompt_and_answer_tokens():
    async with TeacherServer() as server, aiohttp.ClientSession() as session:
        _, _, raw = await post(session, server.base_url + "/chat/completions", chat(HISTORY))
    answer = json.loads(raw)
    prompt = 3 + sum(4 + tokens.count(m["content"]) for m in HISTORY)
    completion = tokens.count(answer["choices"][0]["message"]["content"])
    assert answer["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def test_word_counter_counts_whitespace_words():
    knobs = TeacherKnobs(token_counter="words", answer_words=5)
    async with TeacherServer(knobs) as server, aiohttp.ClientSession() as session:
        _, _, raw = await post(
            session, server.base_url + "/chat/completions", chat([{"role": "user", "content": "a b c"}])
        )
    answer = json.loads(raw)
    text = answer["choices"][0]["message"]["content"]
    assert answer["usage"]["prompt_tokens"] == 3 + 4 + 3
    assert (
        answer["usage"]["completion_tokens"] == len(text.split()) == 3 + 3 + 5
    )  # Answer to: [hash], a b c, 5 fillers


async def test_max_tokens_truncates_and_reports_length():
    messages = [{"role": "user", "content": "Tell me everything."}]
    async with TeacherServer(TeacherKnobs(answer_words=40)) as server, aiohttp.ClientSession() as session:
        url = server.base_url + "/chat/completions"
        cut = json.loads((await post(session, url, chat(messages, max_tokens=7)))[2])
        roomy = json.loads((await post(session, url, chat(messages, max_tokens=500)))[2])
    full = chat_answer(messages, answer_words=40)
    text = cut["choices"][0]["message"]["content"]
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 7 and tokens.count(text) == 7
    assert full.startswith(text) and len(text) < len(full)
    assert roomy["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": full},
        "finish_reason": "stop",
    }


async def test_stop_sequences_cut_the_answer():
    messages = [{"role": "user", "content": "hello there"}]
    async with TeacherServer() as server, aiohttp.ClientSession() as session:
        url = server.base_url + "/chat/completions"
        one = json.loads((await post(session, url, chat(messages, stop="there")))[2])
        many = json.loads((await post(session, url, chat(messages, stop=["zzz", " ["])))[2])
    assert one["choices"][0]["message"]["content"] == "Answer to: hello "
    assert many["choices"][0]["message"]["content"] == "Answer to: hello there"
    assert one["choices"][0]["finish_reason"] == many["choices"][0]["finish_reason"] == "stop"


async def test_completions_answer_the_last_inst_turn_of_a_llama2_prompt():
    prompt = (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nfirst [/INST] one </s><s>[INST] second question [/INST]"
    )
    async with TeacherServer() as server, aiohttp.ClientSession() as session:
        status, _, raw = await post(
            session, server.base_url + "/completions", {"model": "m", "prompt": prompt, "stop": ["[INST]"]}
        )
    answer = json.loads(raw)
    digest = hashlib.blake2b(prompt.encode(), digest_size=4).hexdigest()
    assert status == 200 and answer["object"] == "text_completion"
    assert answer["choices"][0]["text"] == f"Answer to: second question [{digest}]" == prompt_answer(prompt)
    assert answer["usage"]["prompt_tokens"] == tokens.count(prompt)
    assert prompt_answer("[INST] <<SYS>>\nsys\n<</SYS>>\n\nonly turn [/INST]").startswith(
        "Answer to: only turn ["
    )
    assert prompt_answer("plain text prompt").startswith("Answer to: plain text prompt [")


async def test_models_lists_the_configured_model():
    async with TeacherServer(TeacherKnobs(model="llama-70b")) as server, aiohttp.ClientSession() as session:
        response = await session.get(server.base_url + "/models")
        listing = await response.json()
    assert [m["id"] for m in listing["data"]] == ["llama-70b"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages"),
        ({"model": "m", "messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}, "stream"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
    ],
)
async def test_invalid_bodies_get_400_with_an_openai_error(body, param):
    async with TeacherServer() as server, aiohttp.ClientSession() as session:
        status, headers, raw = await post(session, server.base_url + "/chat/completions", body)
        assert server.stats.bad_requests == 1 and server.stats.answered == 0
    error = json.loads(raw)["error"]
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


async def test_text_parts_are_accepted_as_content():
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]}
    ]
    async with TeacherServer() as server, aiohttp.ClientSession() as session:
        _, _, raw = await post(session, server.base_url + "/chat/completions", chat(parts))
    assert json.loads(raw)["choices"][0]["message"]["content"] == chat_answer(
        [{"role": "user", "content": "hello world"}]
    )


async def test_api_key_is_required_when_configured():
    body = chat([{"role": "user", "content": "hi"}])
    async with TeacherServer(TeacherKnobs(api_key="sekret")) as server, aiohttp.ClientSession() as session:
        url = server.base_url + "/chat/completions"
        missing = await post(session, url, body)
        wrong = await post(session, url, body, {"Authorization": "Bearer nope"})
        right = await post(session, url, body, {"Authorization": "Bearer sekret"})
        assert server.stats.unauthorized == 2 and server.stats.answered == 1
    assert missing[0] == wrong[0] == 401 and right[0] == 200
    assert json.loads(missing[2])["error"]["code"] == "invalid_api_key"
    async with TeacherServer() as open_server, aiohttp.ClientSession() as session:
        assert (
            await post(
                session, open_server.base_url + "/chat/completions", body, {"Authorization": "Bearer any"}
            )
        )[0] == 200


async def test_stats_count_requests_by_hash_and_reset():
    first = chat([{"role": "user", "content": "one"}])
    second = chat([{"role": "user", "content": "two"}])
    async with TeacherServer() as server, aiohttp.ClientSession() as session:
        url = server.base_url + "/chat/completions"
        for body in (first, second, first):
            _, headers, _ = await post(session, url, body)
        await post(session, url, b"{")
        async with session.get(server.root_url + "/stats") as response:
            stats = await response.json()
        async with session.get(server.root_url + "/stats?hashes=0") as response:
            brief = await response.json()
        async with session.post(server.root_url + "/stats/reset") as response:
            assert response.status == 200
        async with session.get(server.root_url + "/stats") as response:
            after = await response.json()
    assert headers["x-teacher-request-hash"] == request_hash(first)
    assert stats["requests"] == 4 and stats["answered"] == 3 and stats["bad_requests"] == 1
    assert stats["received_by_hash"] == {request_hash(first): 2, request_hash(second): 1}
    assert stats["answered_by_hash"] == stats["received_by_hash"]
    assert stats["distinct_requests"] == 2 and stats["answered_more_than_once"] == 1
    assert stats["prompt_tokens"] > 0 and stats["completion_tokens"] > 0 and stats["max_in_flight"] == 1
    assert "received_by_hash" not in brief and brief["requests"] == 4
    assert after["requests"] == 0 and after["received_by_hash"] == {}


def test_request_hash_ignores_key_order_and_whitespace():
    assert request_hash({"b": 1, "a": [1, {"y": 2, "x": 3}]}) == request_hash(
        json.loads('{"a":[1,{"x":3,"y":2}],  "b":1}')
    )
    assert re.fullmatch(r"[0-9a-f]{16}", request_hash({"a": 1}))


async def test_together_sdk_reads_the_answers():
    async with TeacherServer(TeacherKnobs(api_key="test")) as server:
        async with together.AsyncTogether(api_key="test", base_url=server.root_url, max_retries=0) as client:
            reply = await client.chat.completions.create(model="teacher-70b", messages=HISTORY, max_tokens=64)
            text = await client.completions.create(
                model="teacher-70b", prompt="[INST] hi [/INST]", max_tokens=3
            )
        async with together.AsyncTogether(
            api_key="wrong", base_url=server.root_url, max_retries=0
        ) as refused:
            with pytest.raises(together.AuthenticationError):
                await refused.chat.completions.create(model="teacher-70b", messages=HISTORY)
    assert reply.choices[0].message.content == chat_answer(HISTORY)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert text.choices[0].finish_reason == "length" and text.usage.completion_tokens == 3


async def test_knobs_change_over_http_and_in_process():
    async with TeacherServer() as server, aiohttp.ClientSession() as session:
        async with session.post(server.root_url + "/knobs", json={"latency": 0.01, "rpm": 600}) as response:
            assert response.status == 200 and (await response.json())["rpm"] == 600
        async with session.post(server.root_url + "/knobs", json={"error_rate": 2}) as response:
            assert response.status == 400 and "--error-rate" in (await response.json())["error"]["message"]
        async with session.get(server.root_url + "/knobs") as response:
            assert (await response.json())["latency"] == 0.01
        assert server.set_knobs(rpm=None).rpm is None and server.knobs.latency == 0.01


def test_knobs_round_trip_and_validate():
    knobs = TeacherKnobs(rpm=600, error_rate=0.1, permanent_marker="NO", permanent_status=422)
    assert TeacherKnobs.from_dict(json.loads(json.dumps(knobs.to_dict()))) == knobs
    for bad, flag in [
        ({"error_rate": 0.7, "hang_rate": 0.5}, "fault rates"),
        ({"rpm": 0}, "--rpm"),
        ({"fail_first_kind": "explode"}, "--fail-first-kind"),
        ({"permanent_status": 429}, "--permanent-status"),
        ({"latency": "slow"}, "--latency"),
        ({"colour": "red"}, "colour"),
        ({"track_hashes": False, "error_rate": 0.1}, "--track-hashes"),
    ]:
        with pytest.raises(UsageError, match=flag):
            TeacherKnobs.from_dict(bad)
