"""A local OpenAI-compatible teacher for tests, benchmarks and the demo.

Deterministic answers (see :mod:`.answers`), a server-side rate limit over one-second windows, reproducible
faults, and a count of everything it received. In-process: :class:`TeacherServer`; in its own process:
:func:`start_teacher_process` or ``distill teacher serve``.
"""

from .answers import chat_answer, prompt_answer, request_hash
from .app import TeacherServer
from .knobs import FAULT_KINDS, TeacherKnobs
from .process import TeacherProcess, TeacherProcessError, start_teacher_process

__all__ = [
    "FAULT_KINDS",
    "TeacherKnobs",
    "TeacherProcess",
    "TeacherProcessError",
    "TeacherServer",
    "chat_answer",
    "prompt_answer",
    "request_hash",
    "start_teacher_process",
]
