"""The stable train/validation split and the rejects file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distill.conversation import Reject
from distill.errors import UsageError
from distill.split import check_fraction, position, split_of, validation_path
from formats.readers import open_reader
from formats.rejects import RejectsWriter, rejects_path_for

FIXTURES = Path(__file__).parent / "fixtures" / "formats"


def test_split_is_a_pure_function_of_the_id_with_the_asked_fraction() -> None:
    ids = [f"conv-{i}" for i in range(20_000)]
    val = [i for i in ids if split_of(i, 0.1) == "validation"]
    assert 0.09 < len(val) / len(ids) < 0.11
    assert val == [i for i in reversed(ids) if split_of(i, 0.1) == "validation"][::-1]
    assert all(split_of(i, 0.0) == "train" for i in ids[:1000])
    # known values pin the hash: a change would silently move records between train and validation
    assert round(position("identity_0"), 6) == 0.241915
    assert [split_of(f"identity_{i}", 0.5) for i in range(6)] == [
        "validation",
        "train",
        "train",
        "validation",
        "validation",
        "validation",
    ]


@given(conv_id=st.text(), low=st.floats(0, 0.99), high=st.floats(0, 0.99))
def test_raising_the_fraction_only_moves_records_to_validation(conv_id: str, low: float, high: float) -> None:
    low, high = sorted((low, high))
    if split_of(conv_id, low) == "validation":
        assert split_of(conv_id, high) == "validation"


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2.0])
def test_fraction_out_of_range_names_the_flag(bad: float) -> None:
    with pytest.raises(UsageError, match="--val-fraction"):
        check_fraction(bad)
    assert check_fraction(0.05) == 0.05


def test_paths_beside_the_output() -> None:
    assert validation_path(Path("d/out.jsonl")) == Path("d/out.val.jsonl")
    assert rejects_path_for(Path("d/out.jsonl")) == Path("d/out.jsonl.rejects.jsonl")
    assert rejects_path_for(Path("out.txt")) == Path("out.txt.rejects.jsonl")


def test_rejects_writer_appends_one_object_per_reject(tmp_path: Path) -> None:
    source = FIXTURES / "sharegpt_mlenergy_slice.json"
    rejects = [r for r in open_reader(source).read(source) if isinstance(r, Reject)]
    path = tmp_path / "out.rejects.jsonl"
    with RejectsWriter(path) as writer:
        for r in rejects:
            writer.write(r)
        assert writer.count == len(rejects)
    with RejectsWriter(path) as writer:
        writer.write(Reject("x.jsonl:3", "invalid JSON: Expecting value at column 1", None))
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == len(rejects) + 1
    assert lines[0] == {"source": rejects[0].source, "reason": rejects[0].reason, "record": rejects[0].record}
    assert lines[-1] == {"source": "x.jsonl:3", "reason": "invalid JSON: Expecting value at column 1"}


def test_no_rejects_no_file(tmp_path: Path) -> None:
    path = tmp_path / "none.rejects.jsonl"
    with RejectsWriter(path):
        pass
    assert not path.exists()
