"""The bundled local servers a pipeline file can ask for by name, so that it runs anywhere, offline.

A value ``"bundled:teacher"`` in a pipeline table (a ``base-url``) starts distill's local teacher for the
pipeline's duration and stands for its ``/v1`` URL; ``"bundled:together"`` starts the local fake of Together's
files and fine-tuning API and stands for its root URL. ``distill demo`` writes its ``pipeline.toml`` this way,
so ``distill pipeline distill-demo/pipeline.toml`` runs again after the demo has stopped its servers. The
teacher's answers are canned and deterministic; the fake trains nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

TEACHER = "bundled:teacher"
TEACHER_MODEL = "local-teacher"  # the name its /v1/models lists (it answers any name)
TOGETHER = "bundled:together"
FAKE_KEY_ENV = "TOGETHER_API_KEY"
FAKE_KEY = "key-for-the-bundled-fake"  # the fake takes any key; the SDK wants one set


def teacher_knobs() -> Any:
    """The local teacher's settings in the demo and in pipelines: short answers, a little latency."""
    from distill.servers.teacher import TeacherKnobs

    return TeacherKnobs(latency=0.02, answer_words=20, model=TEACHER_MODEL)


def wanted(tables: dict[str, dict[str, Any]]) -> set[str]:
    """The bundled servers the tables name."""
    return {v for table in tables.values() for v in table.values() if v in (TEACHER, TOGETHER)}


@contextmanager
def bundled_servers(names: set[str]) -> Iterator[dict[str, str]]:
    """Start the servers ``names`` lists; yield each name's URL; stop them on leaving."""
    urls: dict[str, str] = {}
    with ExitStack() as stack:
        if TEACHER in names:
            from distill.servers.teacher import start_teacher_process

            urls[TEACHER] = stack.enter_context(start_teacher_process(teacher_knobs())).base_url
        if TOGETHER in names:
            from distill.servers.together import FakeTogether

            if not os.environ.get(FAKE_KEY_ENV):
                os.environ[FAKE_KEY_ENV] = FAKE_KEY
                stack.callback(os.environ.pop, FAKE_KEY_ENV, None)
            urls[TOGETHER] = stack.enter_context(FakeTogether(seconds_per_state=0.3).in_thread()).url
        yield urls


def substituted(tables: dict[str, dict[str, Any]], urls: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``tables`` with every bundled server's name replaced by its URL."""
    return {
        step: {k: urls.get(v, v) if isinstance(v, str) else v for k, v in t.items()}
        for step, t in tables.items()
    }
