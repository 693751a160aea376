"""Answers from a local model: a base model and, optionally, a LoRA adapter on it, served under two names.

On a GPU where there is one (in bf16 where it has it), else on the CPU in float32.

:class:`LocalModels` loads the base (a folder or hub id, see :mod:`trainers.local.model_ref`) and the peft
adapter a local fine-tune saved, and generates for one request at a time: the student with the adapter on, the
base with it switched off (``disable_adapter``), so one process evaluates both. Chat requests are rendered
with the tokenizer's chat template and a generation prompt; completion requests are tokenized as they are,
with the tokenizer's special tokens (a BOS where the model has one), as vLLM does.

Sampling follows the OpenAI API: ``temperature`` 0 is greedy, above 0 samples (with ``top_p``, ``top_k``);
without a temperature the model's own generation config decides (greedy for a model saved without one).
``stop`` strings end the answer and are cut from it. ``finish_reason`` is ``stop`` for an end-of-turn token or
a stop string, ``length`` when ``max_tokens`` ran out.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.utils import logging as transformers_logging

from distill.errors import UsageError

from .model_ref import resolve_model

DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One request's input (``messages`` for chat, else ``prompt``) and its sampling parameters."""

    model: str
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class Generation:
    """A finished answer and what it cost in tokens."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class LocalModels:
    """``base`` (named ``model_name``) and, with ``adapter``, the student on it (named ``adapter_name``)."""

    def __init__(self, model: str, adapter: str | None = None) -> None:
        source = resolve_model(model)
        self.model_name = model
        self.adapter_name = adapter
        self.tokenizer = AutoTokenizer.from_pretrained(source.ref, local_files_only=source.local_files_only)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        with _quiet_loading():
            base = AutoModelForCausalLM.from_pretrained(
                source.ref, local_files_only=source.local_files_only, dtype=dtype
            )
            self.model = (_with_adapter(base, adapter) if adapter else base).to(self.device)
        self.model.eval()
        self._lock = threading.Lock()  # one generation at a time: the adapter switch is the model's state

    @property
    def names(self) -> list[str]:
        """The model names requests may ask for."""
        return [self.model_name] + ([self.adapter_name] if self.adapter_name else [])

    def knows(self, name: str) -> bool:
        return _canonical(name) in {_canonical(n) for n in self.names}

    def generate(self, request: GenerationRequest) -> Generation:
        """Answer ``request`` (blocking: call it from a worker thread)."""
        prompt_ids = self._prompt_ids(request)
        student = self.adapter_name is not None and _canonical(request.model) == _canonical(self.adapter_name)
        with self._lock, torch.inference_mode():
            if request.seed is not None:
                torch.manual_seed(request.seed)
            if self.adapter_name is not None and not student:
                with self.model.disable_adapter():
                    output = self._generate(prompt_ids, request)
            else:
                output = self._generate(prompt_ids, request)
        return self._finish(prompt_ids, output[0, prompt_ids.shape[1] :].tolist(), request)

    def _prompt_ids(self, request: GenerationRequest) -> torch.Tensor:
        if request.messages is not None:
            if self.tokenizer.chat_template is None:
                raise UsageError(f"{self.model_name} has no chat template; use /v1/completions")
            encoded = self.tokenizer.apply_chat_template(
                request.messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
            )
            return encoded["input_ids"].to(self.device)
        return self.tokenizer(request.prompt or "", return_tensors="pt")["input_ids"].to(self.device)

    def _generate(self, prompt_ids: torch.Tensor, request: GenerationRequest) -> torch.Tensor:
        config = GenerationConfig.from_model_config(self.model.config)
        config.update(**self.model.generation_config.to_diff_dict())
        config.max_new_tokens = request.max_tokens
        if request.temperature is not None:
            config.do_sample = request.temperature > 0
            config.temperature = request.temperature if request.temperature > 0 else None
        if config.do_sample:
            config.top_p = request.top_p if request.top_p is not None else config.top_p
            config.top_k = request.top_k if request.top_k is not None else config.top_k
        else:
            config.top_p = config.top_k = config.temperature = None
        if request.repetition_penalty is not None:
            config.repetition_penalty = request.repetition_penalty
        if request.stop:
            config.stop_strings = request.stop
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        return self.model.generate(
            input_ids=prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            generation_config=config,
            tokenizer=self.tokenizer if request.stop else None,
        )

    def _finish(self, prompt_ids: torch.Tensor, new_ids: list[int], request: GenerationRequest) -> Generation:
        ends = self._end_ids()
        hit_end = bool(new_ids) and new_ids[-1] in ends
        text = self.tokenizer.decode(new_ids[:-1] if hit_end else new_ids, skip_special_tokens=True)
        cut = _cut_at_stop(text, request.stop)
        finish = "stop" if hit_end or cut is not None else "length"
        if cut is None and len(new_ids) < request.max_tokens:
            finish = "stop"  # generation ended early on a criterion of the model's own
        return Generation(
            text=text if cut is None else cut,
            finish_reason=finish,
            prompt_tokens=int(prompt_ids.shape[1]),
            completion_tokens=len(new_ids),
        )

    def _end_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No per-weight progress bar, and not peft's note to transformers about a renamed method."""
    bar_was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
            yield
    finally:
        if bar_was_on:
            transformers_logging.enable_progress_bar()


def _with_adapter(base: Any, adapter: str) -> Any:
    from peft import PeftModel

    folder = Path(adapter).expanduser()
    if not (folder / "adapter_config.json").is_file():
        what = (
            "a whole model (a full fine-tune): serve it with --model"
            if (folder / "config.json").is_file()
            else "no adapter"
        )
        raise UsageError(
            f"--adapter {adapter}: the folder holds {what}; --adapter takes a LoRA adapter's folder"
        )
    return PeftModel.from_pretrained(base, str(folder))


def _cut_at_stop(text: str, stops: list[str]) -> str | None:
    """``text`` up to the first stop string in it, or None when none occurs."""
    positions = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return text[: min(positions)] if positions else None


def _canonical(name: str) -> str:
    """Path-like names compare by the folder they point at (``./adapter/`` is ``adapter``)."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name
