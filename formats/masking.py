"""Which tokens Together trains on, by data format: the warning for ``text`` files with ``train_on_inputs=auto``.

Together's ``train_on_inputs="auto"`` masks the user turns of ``messages`` files and the prompt of
``prompt``/``completion`` files, but masks nothing in ``text`` files: a Llama-2 ``[INST]`` text file trained with
``auto`` learns to write the prompts too. ``distill check`` and ``distill train --backend together`` say so.
"""

from __future__ import annotations

TEXT_AUTO_WARNING = (
    "this is a text file: Together's train_on_inputs=auto masks nothing in text files, so the fine-tune will "
    "also train on the prompts ([INST] ... [/INST] and the system prompt). For a loss on the answers only, write "
    "the data as messages (distill run/export --output-format messages, the default) or prompt-completion, where "
    "auto masks the prompts; pass --train-on-inputs true to train on the prompts on purpose and silence this"
)


def prompt_loss_warning(data_format: str | None, train_on_inputs: str = "auto") -> str | None:
    """The warning for a file of ``data_format`` trained with ``train_on_inputs`` at Together, if any."""
    if data_format == "text" and train_on_inputs == "auto":
        return TEXT_AUTO_WARNING
    return None
