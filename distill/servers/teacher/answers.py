"""What the local teacher answers: request validation, the deterministic answer, and its usage numbers.

The answer to a request is a pure function of its conversation::

    Answer to: <first 60 characters of the last user turn> [<8 hex digits of the history's hash>]

followed by ``answer_words`` filler words when that knob is set. The hash is BLAKE2b with a 4-byte digest of
the compact JSON of ``[[role, text], ...]`` over every message (or of the whole prompt's UTF-8 for
``/completions``), so a test can check that request k carried exactly the history it should. :func:`chat_answer` and :func:`prompt_answer` compute it the same way the server does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from distill import tokens
from distill.errors import DistillError
from distill.servers.openai_body import completion_body

CHAT_ROLES = frozenset(("system", "user", "assistant"))
HEAD_CHARS = 60
FILLER = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda")
NUMBER_PARAMS = (
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
)


class InvalidRequest(DistillError):
    """A request body the teacher refuses with 400; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True)
class TeacherRequest:
    """A validated completion request, reduced to what decides the answer and its cost."""

    kind: str  # "chat" or "completions"
    model: str
    last_user: str
    history_digest: str  # 8 hex digits
    prompt_tokens: int
    max_tokens: int | None
    stop: tuple[str, ...]


@dataclass(slots=True)
class Completion:
    """The answer text after ``stop`` and ``max_tokens`` were applied."""

    text: str
    finish_reason: str  # "stop" or "length"
    completion_tokens: int


def load_body(raw: bytes) -> Any:
    """The JSON in a request body; :class:`InvalidRequest` when it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not valid JSON") from None


def request_hash(body: Any) -> str:
    """16 hex digits identifying a whole request body (key order and whitespace do not matter)."""
    return hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=8).hexdigest()


def history_digest(pairs: list[tuple[str, str]] | str) -> str:
    """8 hex digits of a chat history (``(role, text)`` pairs) or of a whole prompt."""
    data = pairs.encode() if isinstance(pairs, str) else orjson.dumps(pairs)
    return hashlib.blake2b(data, digest_size=4).hexdigest()


def answer_text(last_user: str, digest: str, answer_words: int = 0) -> str:
    """The full answer before ``stop`` and ``max_tokens`` cut it."""
    text = f"Answer to: {last_user[:HEAD_CHARS]} [{digest}]"
    if answer_words:
        start = int(digest, 16)
        text += " " + " ".join(FILLER[(start + i) % len(FILLER)] for i in range(answer_words))
    return text


def chat_answer(messages: list[dict[str, Any]], answer_words: int = 0) -> str:
    """The answer the teacher gives to a chat request with ``messages`` (before ``stop``/``max_tokens``)."""
    pairs = [(m["role"], _content_text(m["content"], 0)) for m in messages]
    last_user = next(text for role, text in reversed(pairs) if role == "user")
    return answer_text(last_user, history_digest(pairs), answer_words)


def prompt_answer(prompt: str, answer_words: int = 0) -> str:
    """The answer the teacher gives to a ``/completions`` request with ``prompt``."""
    return answer_text(last_inst_turn(prompt), history_digest(prompt), answer_words)


def last_inst_turn(prompt: str) -> str:
    """The last user turn of a Llama-2 ``[INST]`` prompt (without its ``<<SYS>>`` block); else the whole prompt."""
    end = prompt.rfind("[/INST]")
    if end < 0:
        return prompt.strip()
    start = prompt.rfind("[INST]", 0, end)
    turn = prompt[start + len("[INST]") if start >= 0 else 0 : end]
    sys_end = turn.find("<</SYS>>")
    if sys_end >= 0:
        turn = turn[sys_end + len("<</SYS>>") :]
    return turn.strip()


def count_tokens(text: str, counter: str) -> int:
    """Tokens in ``text``: cl100k_base through :mod:`distill.tokens`, or whitespace-separated words."""
    return tokens.count(text) if counter == "tiktoken" else len(text.split())


def parse_chat(body: Any, counter: str) -> TeacherRequest:
    """Validate a ``/v1/chat/completions`` body; raise :class:`InvalidRequest` on anything the API would refuse."""
    common = _common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list of {role, content} objects", "messages")
    pairs = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise InvalidRequest(
                f"messages[{i}] must be an object whose role is system, user or assistant", "messages"
            )
        pairs.append((message["role"], _content_text(message.get("content"), i)))
    last_user = next((text for role, text in reversed(pairs) if role == "user"), None)
    if last_user is None:
        raise InvalidRequest("'messages' must contain at least one user message", "messages")
    prompt_tokens = tokens.PER_REQUEST_OVERHEAD + sum(
        tokens.PER_MESSAGE_OVERHEAD + count_tokens(text, counter) for _, text in pairs
    )
    model, max_tokens, stop = common
    return TeacherRequest("chat", model, last_user, history_digest(pairs), prompt_tokens, max_tokens, stop)


def parse_completion(body: Any, counter: str) -> TeacherRequest:
    """Validate a ``/v1/completions`` body; raise :class:`InvalidRequest` on anything the API would refuse."""
    common = _common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise InvalidRequest("'prompt' must be a non-empty string", "prompt")
    model, max_tokens, stop = common
    prompt_tokens = count_tokens(prompt, counter)
    return TeacherRequest(
        "completions", model, last_inst_turn(prompt), history_digest(prompt), prompt_tokens, max_tokens, stop
    )


def _common(body: Any) -> tuple[str, int | None, tuple[str, ...]]:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string", "model")
    if body.get("stream"):
        raise InvalidRequest("the local teacher does not stream: leave 'stream' out or false", "stream")
    if body.get("n") not in (None, 1):
        raise InvalidRequest("the local teacher answers n=1 only", "n")
    for name in NUMBER_PARAMS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise InvalidRequest(f"'{name}' must be a number", name)
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise InvalidRequest("'max_tokens' must be a positive integer", "max_tokens")
    return model, max_tokens, _stop(body.get("stop"))


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,) if stop else ()
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return tuple(s for s in stop if s)
    raise InvalidRequest("'stop' must be a string or a list of strings", "stop")


def _content_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) == len(content) and all(isinstance(p, str) for p in parts):
            return "".join(parts)
    raise InvalidRequest(f"messages[{index}].content must be a string or a list of text parts", "messages")


def complete(request: TeacherRequest, answer_words: int, counter: str) -> Completion:
    """The answer to ``request``, cut at its first stop sequence and at ``max_tokens``."""
    text = answer_text(request.last_user, request.history_digest, answer_words)
    cut = min((i for i in (text.find(s) for s in request.stop) if i >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
    used = count_tokens(text, counter)
    if request.max_tokens is not None and used > request.max_tokens:
        return Completion(_truncate(text, request.max_tokens, counter), "length", request.max_tokens)
    return Completion(text, "stop", used)


def _truncate(text: str, max_tokens: int, counter: str) -> str:
    if counter == "words":
        return " ".join(text.split()[:max_tokens])
    encoding = tokens.encoding()
    return encoding.decode(encoding.encode_ordinary(text)[:max_tokens])


def answer_json(parsed: TeacherRequest, completion: Completion, request_hash: str) -> dict[str, Any]:
    """The OpenAI-style JSON body of an answer (``chat.completion`` or ``text_completion``)."""
    return completion_body(
        parsed.kind,
        answer_id=request_hash,
        model=parsed.model,
        text=completion.text,
        finish_reason=completion.finish_reason,
        prompt_tokens=parsed.prompt_tokens,
        completion_tokens=completion.completion_tokens,
    )
