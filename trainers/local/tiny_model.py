"""A tiny Llama built on this machine, with no network: a student to try the local trainer and server on.

``make_tiny_model(DIR)`` (``distill train --make-tiny-model DIR``) writes a complete model folder that
``--model DIR`` names like any Hugging Face checkpoint:

* a byte-level BPE tokenizer trained here on distill's bundled sample data (``distill/data/``), with Llama-3's
  special tokens and a Llama-3-like chat template (system prompts, generation prompt, ``<|eot_id|>`` after each
  turn), saved as a transformers fast tokenizer (``tokenizer.json`` + ``tokenizer_config.json``);
* a two-layer ``LlamaForCausalLM`` of a few hundred thousand parameters, randomly initialised (seeded), saved
  as safetensors, with a generation config that stops at ``<|eot_id|>``.

It knows nothing: it is for checking that training, masking, serving and evaluation work end to end in seconds
on a CPU. A real student is a hub name (``--model meta-llama/Llama-3.2-1B-Instruct``, downloaded once into the
Hugging Face cache) or a folder holding one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from distill.errors import UsageError

BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
HEADER_START, HEADER_END, PAD = "<|start_header_id|>", "<|end_header_id|>", "<|finetune_right_pad_id|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, HEADER_START, HEADER_END, EOT)

# Llama-3 Instruct's layout without its tool-calling and date preamble: a header per message, content trimmed,
# <|eot_id|> closing each turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
SAMPLE_FILES = ("sample_sharegpt.json", "coqa_train_sample.json")


@dataclass(frozen=True, slots=True)
class TinyModelShape:
    """The size of the model; the defaults give about 240,000 parameters."""

    vocab_size: int = 1024
    hidden_size: int = 64
    intermediate_size: int = 192
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096


@dataclass(frozen=True, slots=True)
class TinyModel:
    """What :func:`make_tiny_model` wrote."""

    path: Path
    parameters: int
    vocab_size: int


def make_tiny_model(directory: Path, *, seed: int = 0, shape: TinyModelShape | None = None) -> TinyModel:
    """Build the tokenizer and the model and save both into ``directory`` (new or empty)."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UsageError(
            f"--make-tiny-model {directory}: the folder exists and is not empty; choose a new one"
        )
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
        from transformers.utils import logging as transformers_logging
    except ImportError as e:
        raise UsageError(
            f"--make-tiny-model needs the 'local' extra ({e.name} is missing): pip install 'distill[local]'"
        ) from None
    shape = shape or TinyModelShape()
    tokenizer = train_tokenizer(shape.vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        initializer_range=0.2,  # logits wide enough for a few LoRA steps to move the loss of a random model
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids(EOT), tokenizer.convert_tokens_to_ids(EOS)],
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    directory.mkdir(parents=True, exist_ok=True)
    bar_was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # one tiny shard: a bar would only be noise
    try:
        model.save_pretrained(directory, safe_serialization=True)
    finally:
        if bar_was_on:
            transformers_logging.enable_progress_bar()
    tokenizer.save_pretrained(directory)
    return TinyModel(directory, sum(p.numel() for p in model.parameters()), len(tokenizer))


def train_tokenizer(vocab_size: int):
    """A byte-level BPE trained on the bundled samples, wrapped as a fast tokenizer with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers import trainers as bpe_trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = bpe_trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(sample_texts(), trainer)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bpe.token_to_id(BOS))]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=EOT, pad_token=PAD)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def sample_texts() -> Iterator[str]:
    """Every string in the bundled sample files: ShareGPT turns, CoQA stories, questions and answers."""
    for name in SAMPLE_FILES:
        yield from _strings(json.loads((files("distill") / "data" / name).read_text(encoding="utf-8")))


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
