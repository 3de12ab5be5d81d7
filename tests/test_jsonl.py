"""``tabom.jsonl``: the generic JSONL writer and reader (DESIGN §8)."""

from __future__ import annotations

import pytest

from tabom.errors import TabomError
from tabom.jsonl import JsonlError, read_jsonl, write_jsonl
from tabom.tasks.base import DataFileError
from tabom.tasks.base import read_jsonl as read_task_jsonl


def test_write_then_read_round_trips_and_leaves_no_temporary(tmp_path):
    rows = [{"prompt": "1+2=", "answer": "3"}, {"prompt": "é", "n": [1, 2]}]
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    assert [r for _, r in read_jsonl(path)] == rows
    assert [i for i, _ in read_jsonl(path)] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]
    write_jsonl(path, rows[:1])  # a rewrite replaces the whole file
    assert [r for _, r in read_jsonl(path)] == rows[:1]


def test_a_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n[1, 2]\n')
    with pytest.raises(JsonlError, match=r"x\.jsonl:3: not a JSON object"):
        read_jsonl(path)
    assert issubclass(JsonlError, TabomError)
    # the tasks' reader is the same reader with the tasks' error
    with pytest.raises(DataFileError, match=r"x\.jsonl:3: field '<line>': not a JSON object"):
        read_task_jsonl(path)
    path.write_text("{oops\n")
    with pytest.raises(JsonlError, match=r"x\.jsonl:1: not valid JSON"):
        read_jsonl(path)
