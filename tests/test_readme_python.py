"""The README's Python API example runs as written (issue 13, item 10): every ```python block of README.md is
executed in a fresh interpreter, in a directory holding its ``sharegpt.json``, with the local teacher's URL in
place of Together's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from distill.servers.teacher import TeacherKnobs, start_teacher_process

ROOT = Path(__file__).resolve().parent.parent
SHAREGPT = Path(__file__).parent / "fixtures" / "engine" / "fastchat_dummy_60.json"
TOGETHER = "https://api.together.xyz/v1"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.M | re.S)


def test_the_readme_python_examples_run_against_the_local_teacher(tmp_path):
    blocks = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert blocks and all(TOGETHER in block for block in blocks)
    shutil.copy(SHAREGPT, tmp_path / "sharegpt.json")
    env = {**os.environ, "TOGETHER_API_KEY": "not-needed-locally", "PYTHONPATH": str(ROOT)}
    with start_teacher_process(TeacherKnobs(model="meta-llama/Llama-3.3-70B-Instruct-Turbo")) as teacher:
        for block in blocks:
            done = subprocess.run(
                [sys.executable, "-c", block.replace(TOGETHER, teacher.base_url)],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["60", "41"]  # written, requests sent (the sample repeats itself)
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 60
