"""What a run will cost before it is paid for (``--dry-run``), and a spending cap while it runs (``--budget``).

**The estimate.** A conversation of *n* user turns costs *n* requests, and request *k* carries the whole history
before it, so the prompt tokens of a conversation grow with the square of its length: counting only the user
turns (as a flat "tokens in the dataset" figure does) underestimates a multi-turn dataset badly. The estimate
walks every conversation the way the engine will and counts each request's prompt with
:func:`distill.tokens.count_messages` (cl100k_base, so an estimate for other tokenizers), history included:

- under ``--history original`` the history is the dataset's own answers, known exactly;
- under ``--history teacher`` (the default) the history is the teacher's answers, unknown before the run: each
  is counted as the expected output tokens of a request (below). Answers already in the cache are used as they
  are, and requests already answered cost nothing;
- every request not in the cache is expected to produce ``--expected-output-tokens`` tokens (default 512),
  capped by ``--max-tokens``; with ``--max-tokens`` set the worst case (every answer that long) is shown too.

**Prices** are US dollars per million tokens, input and output apart. :data:`DEFAULT_PRICES` holds the list
prices of a few common teachers as published on :data:`PRICES_AS_OF`; they change, so ``--price-in`` and
``--price-out`` override them and are required for any other model. Batch APIs (``--batch``) bill
:data:`BATCH_DISCOUNT` of the list price at both Together and OpenAI.

**The budget.** ``--budget USD`` charges every answer at the price above, from the usage the server reported
(counted locally only when a server reports none). A request goes out only if its estimated cost (its prompt
and the expected output), with everything already spent or in flight, fits in the budget; under ``--batch`` the
same holds for each batch file. Once a request does not fit, no new one is sent; requests in flight finish and
are saved, the answered conversations are written, and the run stops with :class:`BudgetReached` (exit code
75). The budget covers everything spent on the cache for the run's settings (``--budget-scope total``, the
default): every answer paid for is recorded in the cache with its cost, so the same command run again counts what
the earlier invocations spent, and continues only under a higher ``--budget``. ``--budget-scope run`` caps each
invocation alone. Without ``--budget`` a :class:`Budget` with no limit still meters the spend, whenever the
price is known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import plan, tokens
from .conversation import Conversation, Message, Reject
from .errors import DistillError, UsageError
from .llama2 import render_llama2
from .requests import TeacherRequest, TeacherResponse
from .settings import RunSettings

PRICES_AS_OF = "2025-06"
BATCH_DISCOUNT = 0.5
BUDGET_EXIT_CODE = 75  # sysexits EX_TEMPFAIL: stopped on purpose, run again to continue


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million input (prompt) and output (completion) tokens, and where the figures come from."""

    input: float
    output: float
    source: str = "--price-in/--price-out"

    def cost(self, prompt_tokens: float, completion_tokens: float, discount: float = 1.0) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6 * discount


_TOGETHER = f"Together serverless list price, {PRICES_AS_OF} (https://www.together.ai/pricing)"
_OPENAI = f"OpenAI list price, {PRICES_AS_OF} (https://openai.com/api/pricing)"

DEFAULT_PRICES: dict[str, Price] = {
    "meta-llama/Llama-3.3-70B-Instruct-Turbo": Price(0.88, 0.88, _TOGETHER),
    "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo": Price(0.18, 0.18, _TOGETHER),
    "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo": Price(0.88, 0.88, _TOGETHER),
    "meta-llama/Meta-Llama-3.1-405B-Instruct-Turbo": Price(3.50, 3.50, _TOGETHER),
    "Qwen/Qwen2.5-72B-Instruct-Turbo": Price(1.20, 1.20, _TOGETHER),
    "deepseek-ai/DeepSeek-V3": Price(1.25, 1.25, _TOGETHER),
    "gpt-4o": Price(2.50, 10.00, _OPENAI),
    "gpt-4o-mini": Price(0.15, 0.60, _OPENAI),
    "gpt-4.1": Price(2.00, 8.00, _OPENAI),
    "gpt-4.1-mini": Price(0.40, 1.60, _OPENAI),
}
"""List prices of a few common teachers, dated :data:`PRICES_AS_OF`; check the provider's page before trusting them."""


def resolve_price(model: str, price_in: float | None = None, price_out: float | None = None) -> Price | None:
    """The price given by the flags, else the dated default for ``model``, else None (unknown)."""
    if (price_in is None) != (price_out is None):
        raise UsageError("pass both --price-in and --price-out (US dollars per million tokens), or neither")
    if price_in is not None and price_out is not None:
        if price_in < 0 or price_out < 0:
            raise UsageError("--price-in and --price-out must not be negative")
        return Price(price_in, price_out)
    wanted = model.lower()
    return next((p for name, p in DEFAULT_PRICES.items() if name.lower() == wanted), None)


def expected_output_tokens(settings: RunSettings) -> int:
    """Tokens a request is expected to produce: ``estimated_output_tokens``, capped by ``max_tokens``."""
    if settings.sampling.max_tokens is not None:
        return min(settings.estimated_output_tokens, settings.sampling.max_tokens)
    return settings.estimated_output_tokens


# -- the estimate ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Estimate:
    """What a run over a dataset will send. Token figures cover only the requests not already cached."""

    expected_output: int
    max_tokens: int | None = None
    conversations: int = 0
    rejects: int = 0
    requests: int = 0
    cached_requests: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    estimated_history_answers: int = 0
    worst_prompt_tokens: int = 0

    @property
    def requests_to_send(self) -> int:
        return self.requests - self.cached_requests

    @property
    def worst_output_tokens(self) -> int | None:
        return None if self.max_tokens is None else self.requests_to_send * self.max_tokens

    def cost(self, price: Price, discount: float = 1.0) -> float:
        return price.cost(self.prompt_tokens, self.output_tokens, discount)

    def worst_cost(self, price: Price, discount: float = 1.0) -> float | None:
        worst = self.worst_output_tokens
        return None if worst is None else price.cost(self.worst_prompt_tokens, worst, discount)


Lookup = Callable[[str], TeacherResponse | None]


def estimate(
    records: Iterable[Conversation | Reject], settings: RunSettings, lookup: Lookup | None = None
) -> Estimate:
    """Count what answering ``records`` under ``settings`` sends; ``lookup`` finds answers already cached."""
    result = Estimate(expected_output_tokens(settings), settings.sampling.max_tokens)
    for record in records:
        if isinstance(record, Reject):
            result.rejects += 1
        else:
            result.conversations += 1
            _add_conversation(result, record, settings, lookup)
    return result


def _add_conversation(
    result: Estimate, conversation: Conversation, settings: RunSettings, lookup: Lookup | None
) -> None:
    teacher_history = settings.history == "teacher"
    answers: list[str | None] = []  # the teacher's answers so far; None where not known before the run
    for k in range(plan.turn_count(conversation, settings)):
        result.requests += 1
        known_history = not teacher_history or None not in answers
        if known_history and lookup is not None:
            found = lookup(plan.request_for(conversation, settings, k, [a or "" for a in answers]).key)
            if found is not None:
                result.cached_requests += 1
                answers.append(found.text)
                continue
        unknown = answers.count(None) if teacher_history else 0
        base = _prompt_tokens(conversation, settings, k, [a or "" for a in answers])
        result.prompt_tokens += base + unknown * result.expected_output
        result.worst_prompt_tokens += base + unknown * (result.max_tokens or 0)
        result.output_tokens += result.expected_output
        result.estimated_history_answers += unknown
        answers.append(None)


def _prompt_tokens(conversation: Conversation, settings: RunSettings, turn: int, answers: list[str]) -> int:
    """Prompt tokens of request ``turn`` with ``answers`` as the history (unknown answers are empty here)."""
    messages = plan.history_for(conversation, settings, turn, answers)
    if settings.api == "chat":
        return tokens.count_messages([{"content": content} for _, content in messages])
    return tokens.count(render_llama2([Message(role, content) for role, content in messages]))


def prompt_tokens(request: TeacherRequest) -> int:
    """The prompt tokens of ``request`` as :mod:`distill.tokens` counts them."""
    if request.messages is not None:
        return tokens.count_messages([{"content": c} for _, c in request.messages])
    return tokens.count(request.prompt or "")


def request_cost_tokens(request: TeacherRequest, response: TeacherResponse) -> tuple[int, int]:
    """(prompt, completion) tokens of an answer: the server's usage, counted locally where it sent none."""
    prompt = response.prompt_tokens if response.prompt_tokens is not None else prompt_tokens(request)
    completion = response.completion_tokens
    if completion is None:
        completion = tokens.count(response.text)
    return prompt, completion


# -- the budget ----------------------------------------------------------------------------------------------


class BudgetReached(DistillError):
    """The run spent its ``--budget`` and stopped sending; everything answered is saved and written."""

    exit_code = BUDGET_EXIT_CODE


BUDGET_SCOPES = ("total", "run")


class Budget:
    """A spending meter in US dollars, charged from the usage of every answer the server sends; a cap when
    ``limit`` is set.

    A request about to go out first reserves its estimated cost (its prompt, counted, and the expected output);
    a request whose reservation would take the spend plus what is in flight over the limit is refused with
    :class:`BudgetReached`. So the cap holds up to the estimate's error instead of overshooting by everything
    the run keeps in flight; the reservation is released when the request ends and the answer charged at the
    usage the server reported. ``spent_before`` is what earlier invocations spent on the same settings
    (``--budget-scope total``); it counts against the limit. ``on_charge(usd, prompt, completion)`` hears of
    every answer charged (the run records it in the cache).
    """

    def __init__(
        self,
        limit: float | None,
        price: Price,
        discount: float = 1.0,
        *,
        spent_before: float = 0.0,
        on_charge: Callable[[float, int, int], None] | None = None,
    ) -> None:
        if limit is not None and limit <= 0:
            raise UsageError(f"--budget must be a positive amount of US dollars, got {limit:g}")
        self.limit = limit
        self.price = price
        self.discount = discount
        self.spent_before = spent_before
        self.on_charge = on_charge
        self.spent = 0.0
        self.reserved = 0.0
        self.refused = 0

    @property
    def total(self) -> float:
        """Everything spent on these settings: before this invocation and in it."""
        return self.spent_before + self.spent

    @property
    def reached(self) -> bool:
        return self.limit is not None and self.total >= self.limit

    def estimate(self, request: TeacherRequest, output_tokens: int) -> float:
        """The expected cost of sending ``request``."""
        return self.price.cost(prompt_tokens(request), output_tokens, self.discount)

    def reserve(self, amount: float) -> None:
        """Hold ``amount`` for a request about to go out; :class:`BudgetReached` if it does not fit."""
        if self.limit is not None and self.total + self.reserved + amount > self.limit:
            self.refused += 1
            raise BudgetReached(f"{self.summary()}; the next request would go over it")
        self.reserved += amount

    def release(self, amount: float) -> None:
        self.reserved = max(0.0, self.reserved - amount)

    @contextmanager
    def reserving(self, request: TeacherRequest, output_tokens: int) -> Iterator[None]:
        """Hold the estimated cost of ``request`` while it is in flight."""
        amount = self.estimate(request, output_tokens)
        self.reserve(amount)
        try:
            yield
        finally:
            self.release(amount)

    def charge(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Add the cost of one answer."""
        usd = self.price.cost(prompt_tokens, completion_tokens, self.discount)
        self.spent += usd
        if self.on_charge is not None:
            self.on_charge(usd, prompt_tokens, completion_tokens)

    def charge_answer(self, request: TeacherRequest, response: TeacherResponse) -> None:
        self.charge(*request_cost_tokens(request, response))

    def summary(self) -> str:
        spent = f"spent ${self.spent:,.4f} in this run"
        if self.spent_before:
            spent += f" and ${self.total:,.4f} in all on these settings"
        return spent if self.limit is None else f"{spent}, of --budget ${self.limit:,.2f}"


def budget_for(
    limit: float | None,
    model: str,
    price: Price | None,
    *,
    batch: bool = False,
    spent_before: float = 0.0,
    on_charge: Callable[[float, int, int], None] | None = None,
) -> Budget | None:
    """The run's :class:`Budget`: a cap with ``--budget``, else a meter where the price is known, else None.

    ``spent_before`` (what the cache says earlier invocations spent, under ``--budget-scope total``) counts
    against the cap.
    """
    if limit is None and price is None:
        return None
    if price is None:
        raise UsageError(
            f"--budget needs the teacher's price and there is no default for {model!r}: pass --price-in and "
            "--price-out (US dollars per million tokens)"
        )
    return Budget(
        limit, price, BATCH_DISCOUNT if batch else 1.0, spent_before=spent_before, on_charge=on_charge
    )
