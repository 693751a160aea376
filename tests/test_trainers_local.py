"""The local back-end with its extra installed: loss masks token by token, then real fine-tunes of a tiny model.

Nothing is downloaded. The tokenizer is a byte-level BPE trained here on the fixture's text and given the
special tokens and chat template of a Llama-3-like or a Gemma-like model; the model is a two-layer Llama built
from a config. The expected labels are built independently of :mod:`trainers.local.masking`: the test writes
each template's output as a list of pieces it knows the meaning of, checks that the pieces really are what the
template renders, and then every token must be trained exactly when the piece it starts in should be.
"""

from __future__ import annotations

import json
from argparse import Namespace
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("trl")
pytest.importorskip("tokenizers")

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors  # noqa: E402
from tokenizers import trainers as bpe_trainers  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from distill.conversation import Message  # noqa: E402
from distill.errors import CheckError, TrainerError, UsageError  # noqa: E402
from trainers.base import TRAINERS, TrainSpec  # noqa: E402
from trainers.local import LocalTrainer, training  # noqa: E402
from trainers.local.data import TrainingRecord, read_training_file  # noqa: E402
from trainers.local.masking import IGNORE_INDEX, label_record, resolve_mode  # noqa: E402
from trainers.local.options import local_options  # noqa: E402

pytestmark = pytest.mark.local_trainer

FIXTURE = Path(__file__).parent / "fixtures" / "local" / "together_cookbook_small_coqa_3.jsonl"

LLAMA_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
GEMMA_SPECIALS = ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
# Llama-3's layout: a header per message, content trimmed, <|eot_id|> after each turn.
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Gemma-3's layout: no system turn (its text opens the first user turn), the assistant is "model".
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first_prefix = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set first_prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ first_prefix if loop.first else '' }}{{ message['content'] | trim }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@dataclass(frozen=True)
class Piece:
    """A stretch of rendered text: ``kind`` is header, content, end or template; ``message`` its index."""

    text: str
    message: int | None
    kind: str


def llama_pieces(messages: list[Message]) -> list[Piece]:
    pieces = [Piece("<|begin_of_text|>", None, "template")]
    for i, m in enumerate(messages):
        pieces += [
            Piece(f"<|start_header_id|>{m.role}<|end_header_id|>\n\n", i, "header"),
            Piece(m.content.strip(), i, "content"),
            Piece("<|eot_id|>", i, "end"),
        ]
    return pieces


def gemma_pieces(messages: list[Message]) -> list[Piece]:
    pieces = [Piece("<bos>", None, "template")]
    has_system = messages[0].role == "system"
    for i, m in enumerate(messages[1:] if has_system else messages, start=int(has_system)):
        role = "model" if m.role == "assistant" else m.role
        pieces.append(Piece(f"<start_of_turn>{role}\n", i, "header"))
        if has_system and i == 1:
            pieces += [Piece(messages[0].content, 0, "content"), Piece("\n\n", None, "template")]
        pieces += [Piece(m.content.strip(), i, "content"), Piece("<end_of_turn>\n", i, "end")]
    return pieces


def should_train(piece: Piece, messages: list[Message], mode: str) -> bool:
    """The rule each mode states, for one piece of a conversation."""
    if piece.message is None:
        return mode == "true"
    message = messages[piece.message]
    own_text = piece.kind == "content" or (message.role == "assistant" and piece.kind == "end")
    if message.weight == 0 and own_text:
        return False
    if mode == "true":
        return True
    if mode == "false":
        return message.role == "assistant" and own_text
    return own_text  # boilerplate


def expected_labels(tokenizer, pieces: list[Piece], messages: list[Message], mode: str) -> tuple[list, list]:
    text = "".join(p.text for p in pieces)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    owner = []  # piece of each character
    for piece in pieces:
        owner += [piece] * len(piece.text)
    labels = [
        token if should_train(owner[start], messages, mode) else IGNORE_INDEX
        for token, (start, _end) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True)
    ]
    return encoding["input_ids"], labels


def fixture_messages() -> list[list[Message]]:
    return [list(read_training_file(FIXTURE).records[i].messages) for i in range(3)]


def weighted(messages: list[Message], weights: dict[int, int]) -> list[Message]:
    return [replace(m, weight=weights.get(i, m.weight)) for i, m in enumerate(messages)]


def conversations() -> list[list[Message]]:
    """The fixture's three conversations, and one with weights: a user turn, an assistant turn, the system."""
    convs = fixture_messages()
    return [*convs, weighted(convs[1], {0: 0, 2: 1, 3: 0, 4: 0})]


def train_bpe() -> Tokenizer:
    texts = [m.content for conv in fixture_messages() for m in conv]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = bpe_trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", *LLAMA_SPECIALS, *GEMMA_SPECIALS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return bpe


def wrap(bpe: Tokenizer, *, bos: str, eos: str, template: str, add_bos: bool) -> PreTrainedTokenizerFast:
    copy = Tokenizer.from_str(bpe.to_str())
    if add_bos:
        copy.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, copy.token_to_id(bos))]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=copy, bos_token=bos, eos_token=eos, pad_token="<pad>"
    )
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_bpe()


@pytest.fixture(scope="module")
def llama_tokenizer(bpe) -> PreTrainedTokenizerFast:
    return wrap(bpe, bos="<|begin_of_text|>", eos="<|eot_id|>", template=LLAMA_TEMPLATE, add_bos=True)


@pytest.fixture(scope="module")
def gemma_tokenizer(bpe) -> PreTrainedTokenizerFast:
    return wrap(bpe, bos="<bos>", eos="<eos>", template=GEMMA_TEMPLATE, add_bos=False)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, llama_tokenizer) -> Path:
    """A two-layer Llama with the Llama-like tokenizer, saved as a model folder ``--model`` can name."""
    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(llama_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.2,  # logits wide enough for LoRA to move the loss of a random model
        tie_word_embeddings=False,
        bos_token_id=llama_tokenizer.bos_token_id,
        eos_token_id=llama_tokenizer.eos_token_id,
        pad_token_id=llama_tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    llama_tokenizer.save_pretrained(path)
    return path


def record_of(messages: list[Message]) -> TrainingRecord:
    return TrainingRecord(source="test", messages=tuple(messages))


# --- loss masks ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["false", "true", "boilerplate"])
@pytest.mark.parametrize("template", ["llama", "gemma"])
def test_labels_are_masked_exactly_outside_the_trained_spans(
    template, mode, llama_tokenizer, gemma_tokenizer
):
    tokenizer, pieces_of = {
        "llama": (llama_tokenizer, llama_pieces),
        "gemma": (gemma_tokenizer, gemma_pieces),
    }[template]
    for messages in conversations():
        pieces = pieces_of(messages)
        as_dicts = [{"role": m.role, "content": m.content} for m in messages]
        assert "".join(p.text for p in pieces) == tokenizer.apply_chat_template(as_dicts, tokenize=False)
        ids, labels = expected_labels(tokenizer, pieces, messages, mode)
        example = label_record(tokenizer, record_of(messages), mode)
        assert example.input_ids == ids
        for position, (got, want) in enumerate(zip(example.labels, labels, strict=True)):
            token = tokenizer.convert_ids_to_tokens(ids[position])
            assert got == want, (
                f"{template}/{mode}: token {position} {token!r} labelled {got}, expected {want}"
            )


def test_assistant_only_labels_decode_to_the_replies_and_their_turn_ends(gemma_tokenizer):
    messages = fixture_messages()[1]
    example = label_record(gemma_tokenizer, record_of(messages), "false")
    trained = [label for label in example.labels if label != IGNORE_INDEX]
    replies = "".join(f"{m.content.strip()}<end_of_turn>\n" for m in messages if m.role == "assistant")
    assert gemma_tokenizer.decode(trained) == replies


def test_auto_mode_follows_the_data_format():
    assert resolve_mode("auto", "messages") == "false"
    assert resolve_mode("auto", "prompt_completion") == "false"
    assert resolve_mode("auto", "text") == "true"
    assert resolve_mode("boilerplate", "text") == "boilerplate"
    with pytest.raises(UsageError, match="--train-on-inputs"):
        resolve_mode("sometimes", "messages")


@pytest.mark.parametrize(
    ("mode", "bos_trained", "prompt_trained"),
    [("false", False, False), ("true", True, True), ("boilerplate", False, True)],
)
def test_prompt_completion_labels(mode, bos_trained, prompt_trained, llama_tokenizer):
    story = fixture_messages()[1]
    prompt = f"{story[0].content}\nQ: {story[1].content}\nA:"
    completion = f" {story[2].content}"
    example = label_record(llama_tokenizer, TrainingRecord("t", prompt=prompt, completion=completion), mode)
    encoding = llama_tokenizer(prompt + completion, return_offsets_mapping=True)
    assert example.input_ids == [*encoding["input_ids"], llama_tokenizer.eos_token_id]
    assert encoding["input_ids"][0] == llama_tokenizer.bos_token_id
    for position, (start, end) in enumerate(encoding["offset_mapping"]):
        want = bos_trained if end == start else prompt_trained or start >= len(prompt)
        assert (example.labels[position] != IGNORE_INDEX) == want, f"token {position} at {start}:{end}"
    assert example.labels[-1] == llama_tokenizer.eos_token_id


def test_text_trains_every_token_under_auto(llama_tokenizer):
    text = fixture_messages()[0][0].content
    example = label_record(llama_tokenizer, TrainingRecord("t", text=text), resolve_mode("auto", "text"))
    assert example.labels == example.input_ids
    assert example.input_ids[-1] == llama_tokenizer.eos_token_id


def test_a_template_that_rewrites_earlier_turns_is_refused(bpe):
    # Qwen3-like: the last assistant turn gets an empty think block that earlier turns lose.
    template = LLAMA_TEMPLATE.replace(
        "\n\n{{ message['content'] | trim }}",
        "\n\n{% if loop.last and message['role'] == 'assistant' %}<think></think>{% endif %}"
        "{{ message['content'] | trim }}",
    )
    tokenizer = wrap(bpe, bos="<|begin_of_text|>", eos="<|eot_id|>", template=template, add_bos=False)
    messages = fixture_messages()[1]
    with pytest.raises(TrainerError, match="--train-on-inputs true"):
        label_record(tokenizer, record_of(messages), "false")
    assert label_record(tokenizer, record_of(messages), "true").trained_tokens > 0


def test_a_template_that_repeats_content_is_refused_for_boilerplate(bpe):
    template = LLAMA_TEMPLATE.replace(
        "<|eot_id|>{% endfor %}", "<|eot_id|>{{ message['content'] }}{% endfor %}"
    )
    tokenizer = wrap(bpe, bos="<|begin_of_text|>", eos="<|eot_id|>", template=template, add_bos=False)
    with pytest.raises(TrainerError, match="repeats or rewrites"):
        label_record(tokenizer, record_of(fixture_messages()[1]), "boilerplate")


@pytest.mark.parametrize("mode", ["false", "true"])
def test_a_template_without_a_system_role_gets_the_system_prompt_in_the_first_user_turn(
    mode, bpe, gemma_tokenizer
):
    # Gemma-2's rule; Gemma-3's template (GEMMA_TEMPLATE) does the folding itself, so both must agree.
    no_system = GEMMA_TEMPLATE.replace(
        "{{ bos_token }}",
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}",
    )
    gemma2 = wrap(bpe, bos="<bos>", eos="<eos>", template=no_system, add_bos=False)
    messages = fixture_messages()[1]
    folded = label_record(gemma2, record_of(messages), mode)
    native = label_record(gemma_tokenizer, record_of(messages), mode)
    assert (folded.input_ids, folded.labels) == (native.input_ids, native.labels)


def test_a_template_exception_names_the_record(bpe):
    template = "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
    tokenizer = wrap(bpe, bos="<bos>", eos="<eos>", template=template, add_bos=False)
    with pytest.raises(
        CheckError, match="test: the chat template of --model rejects this conversation, with or"
    ):
        label_record(tokenizer, record_of(fixture_messages()[1]), "false")
    user_first = fixture_messages()[1][1:]
    with pytest.raises(
        CheckError, match="test: .* rejects this conversation: Conversation roles must alternate"
    ):
        label_record(tokenizer, record_of(user_first), "false")


def test_messages_need_a_chat_template(bpe):
    tokenizer = wrap(bpe, bos="<bos>", eos="<eos>", template=GEMMA_TEMPLATE, add_bos=False)
    tokenizer.chat_template = None
    with pytest.raises(TrainerError, match="no chat template"):
        label_record(tokenizer, record_of(fixture_messages()[1]), "false")


# --- fine-tuning -----------------------------------------------------------------------------------------------


def spec_for(model_dir: Path, output_dir: Path, **changes) -> TrainSpec:
    settings = {
        "training_file": FIXTURE,
        "model": str(model_dir),
        "n_epochs": 6,
        "batch_size": 3,
        "learning_rate": 3e-2,
        "train_on_inputs": "false",
        "max_seq_length": 1024,  # keeps each story and its first few answers
        "output_dir": output_dir,
        **changes,
    }
    return TrainSpec(**settings)


def logits_of(model, input_ids: list[int]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([input_ids])).logits


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # inside peft
def test_lora_loss_falls_and_the_saved_adapter_gives_the_same_logits(tiny_model_dir, tmp_path):
    out = tmp_path / "adapter"
    spec = spec_for(tiny_model_dir, out)
    outcome = training.fit(spec, local_options(spec), read_training_file(FIXTURE), None)
    training.save(outcome, out)

    losses = outcome.losses
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 1.0, losses
    assert min(losses) == losses[-1], losses
    probe = outcome.train.examples[0].input_ids[:96]
    trained = logits_of(outcome.model, probe)

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    assert torch.allclose(logits_of(reloaded, probe), trained, atol=1e-5)
    # The output folder is itself a model name: transformers finds the base through the adapter's config.
    assert torch.allclose(logits_of(AutoModelForCausalLM.from_pretrained(out), probe), trained, atol=1e-5)
    base = logits_of(AutoModelForCausalLM.from_pretrained(tiny_model_dir), probe)
    assert (base - trained).abs().max() > 0.1
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16
    assert adapter_config["base_model_name_or_path"] == str(tiny_model_dir)


def test_full_fine_tune_saves_a_whole_model(tiny_model_dir, tmp_path):
    out = tmp_path / "full"
    spec = spec_for(tiny_model_dir, out, lora=False, n_epochs=2, learning_rate=1e-3)
    outcome = training.fit(spec, local_options(spec), read_training_file(FIXTURE), None)
    training.save(outcome, out)
    assert not (out / "adapter_config.json").exists()
    probe = outcome.train.examples[1].input_ids[:64]
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert torch.allclose(logits_of(reloaded, probe), logits_of(outcome.model, probe), atol=1e-5)
    assert outcome.losses[-1] < outcome.losses[0]


def test_train_saves_records_and_does_not_train_twice(tiny_model_dir, tmp_path, capfd):
    out = tmp_path / "run"
    spec = spec_for(
        tiny_model_dir, out, n_epochs=2, validation_file=FIXTURE, train_on_inputs="auto", extra={"n_evals": 2}
    )
    trainer = TRAINERS.get("local").from_cli(Namespace(quiet=True))
    assert isinstance(trainer, LocalTrainer)

    result = trainer.train(spec)
    printed = capfd.readouterr()
    assert printed.out == "" and "it/s" not in printed.err and "loss" not in printed.err, printed
    assert (result.job_id, result.status, result.model) == (str(out), "completed", str(out))
    details = result.details
    assert details["method"] == "lora" and details["device"] == "cpu" and details["steps"] == 2
    assert details["train_on_inputs"] == "false" and details["examples"] == 3
    assert 0 < details["trained_tokens"] < details["tokens"]
    assert len(details["losses"]) == 2 and len(details["eval_losses"]) == 2
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "distill-train.json"):
        assert (out / name).is_file(), name

    again = trainer.train(spec)
    assert again.details.pop("reused") is True
    assert again == result
    with pytest.raises(UsageError, match="--output-dir .* a different fine-tune"):
        trainer.train(replace(spec, learning_rate=1e-3))


def test_truncation_that_leaves_nothing_to_train_is_an_error(tiny_model_dir, tmp_path):
    spec = spec_for(tiny_model_dir, tmp_path / "short", max_seq_length=64)
    with pytest.raises(TrainerError, match="--max-seq-length 64"):
        training.fit(spec, local_options(spec), read_training_file(FIXTURE), None)
