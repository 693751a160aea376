"""Shared fixtures: a real local teacher on 127.0.0.1 and small real datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.servers.teacher import TeacherKnobs, TeacherServer

FIXTURES = Path(__file__).parent / "fixtures"
SHAREGPT_60 = FIXTURES / "engine" / "fastchat_dummy_60.json"


@pytest.fixture
async def teacher():
    """An in-process local teacher with default knobs; tests turn knobs with ``teacher.set_knobs``."""
    async with TeacherServer(TeacherKnobs()) as server:
        yield server


@pytest.fixture
def sharegpt_60() -> Path:
    return SHAREGPT_60
