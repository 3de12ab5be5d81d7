"""``tabom.jsonl``: the generic JSONL writer and reader (DESIGN §8)."""

from __future__ import annotations

import pytest

from tabom.errors import DataFileError, TabomError
from tabom.jsonl import read_jsonl, write_jsonl
from tabom.tasks.base import DataFileError as TaskDataFileError


def test_write_then_read_round_trips_and_leaves_no_temporary(tmp_path):
    rows = [{"prompt": "1+2=", "answer": "3"}, {"prompt": "é", "n": [1, 2]}]
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    assert [r for _, r in read_jsonl(path)] == rows
    assert [i for i, _ in read_jsonl(path)] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]
    write_jsonl(path, rows[:1])  # a rewrite replaces the whole file
    assert [r for _, r in read_jsonl(path)] == rows[:1]


def test_a_concurrent_writer_of_the_same_file_keeps_its_temporary(tmp_path):
    """Two processes writing one file (two ``tabom demo`` on one folder) each write their own
    temporary: a write never truncates or renames away the other's half-written one."""
    path = tmp_path / "covered.jsonl"
    other = [tmp_path / "covered.jsonl.tmp", tmp_path / "covered.jsonl.99999999.tmp"]
    for f in other:
        f.write_text('{"half": ')
    write_jsonl(path, [{"a": 1}])
    assert [obj for _, obj in read_jsonl(path)] == [{"a": 1}]
    assert all(f.read_text() == '{"half": ' for f in other)


def test_a_bad_line_names_file_line_and_field(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n[1, 2]\n')
    with pytest.raises(DataFileError, match=r"x\.jsonl:3: field '<line>': not a JSON object"):
        read_jsonl(path)
    path.write_text("{oops\n")
    with pytest.raises(DataFileError, match=r"x\.jsonl:1: field '<line>': not valid JSON"):
        read_jsonl(path)
    path.write_text('{"a": 1, "a": 2}\n')
    with pytest.raises(DataFileError, match=r"x\.jsonl:1: field 'a': duplicate key"):
        read_jsonl(path)


def test_one_error_class_for_a_bad_line_of_any_file():
    # task data, trajectories and plain JSONL raise the same file:line:field error
    assert TaskDataFileError is DataFileError
    assert issubclass(DataFileError, TabomError) and issubclass(TabomError, ValueError)
    err = DataFileError("f.jsonl", 4, "gen.seed", "missing")
    assert (err.path, err.line, err.field, str(err)) == (
        "f.jsonl",
        4,
        "gen.seed",
        "f.jsonl:4: field 'gen.seed': missing",
    )


def test_a_bad_line_is_one_cli_line_and_exit_2(tmp_path, capsys):
    """The merged error keeps the CLI contract: one line naming file, line and field, exit 2."""
    from tabom.cli import main

    bad = tmp_path / "t.jsonl"
    bad.write_text('{"schema_version": 1, "id": "a", "id": "b"}\n')
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tabom inspect: error: {bad}:1: field 'id': duplicate key in the object"]
