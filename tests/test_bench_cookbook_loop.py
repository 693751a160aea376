"""The cookbook-pause baseline of ``bench.peer_rate`` does what its label says, against the real local teacher.

No timing is judged: the loop's own clock stamps each send and each 429, and what must hold is an order between
those stamps (no send within the pause after a 429 it had seen) and the counts the teacher and the loop keep.
"""

from __future__ import annotations

from bench.cookbook_loop import paused_loop
from distill.servers.teacher import TeacherKnobs, TeacherServer


async def test_no_request_starts_within_the_pause_after_a_429():
    async with TeacherServer(TeacherKnobs(rpm=600, rate_headers="none")) as teacher:  # 10 a one-second window
        prompts = [f"question {n}" for n in range(30)]
        outcome = await paused_loop(teacher.base_url, "m", prompts, in_flight=30, pause_s=0.3, attempts=50)
        refused_at_teacher = teacher.stats.rate_limited
    assert outcome.answered == 30 and outcome.lost == 0
    assert outcome.refused > 0 and len(outcome.refusals) == outcome.refused
    assert len(outcome.sends) == outcome.answered + outcome.refused
    for sent in outcome.sends:
        assert all(sent >= refused + 0.3 for refused in outcome.refusals if refused < sent)
    assert refused_at_teacher == outcome.refused


async def test_a_prompt_refused_on_every_attempt_is_lost():
    async with TeacherServer(TeacherKnobs(throttle_rate=1.0)) as teacher:
        outcome = await paused_loop(
            teacher.base_url, "m", ["a", "b", "c"], in_flight=3, pause_s=0.01, attempts=2
        )
    assert outcome.answered == 0 and outcome.lost == 3
    assert outcome.refused == len(outcome.sends) == 6
