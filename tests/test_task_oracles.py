"""Difficulty strata and oracle orders of the tasks (issue 12), against hand-worked cases.

Addition: the longest carry chain and the units-first order. Sudoku: iterated naked singles
(difficulty, oracle order), the blanks range of the generator, and the real Dream files.
"""

from __future__ import annotations

import json

import pytest
import torch

from realdata import VENDORED
from tabom.tasks import AdditionTask, SudokuTask, addition, make_task, sudoku

DATA = VENDORED / "sudoku4x4"


def grid(text: str) -> tuple[int, ...]:
    return tuple(int(ch) for ch in text.replace("/", ""))


# ----------------------------------------------------------------------------- addition


@pytest.mark.parametrize(
    "a,b,chain",
    [
        (12, 34, 0),
        (15, 15, 1),
        (999, 1, 3),
        (9999, 9999, 4),
        (4550, 5650, 3),
        (5005, 5005, 1),
        (1909, 191, 3),
        (0, 0, 0),
        (95, 5, 2),
    ],
)
def test_longest_carry_chain_hand_cases(a, b, chain):
    assert addition.longest_carry_chain(a, b) == chain


def test_longest_carry_chain_matches_the_column_formula():
    """Column k carries out iff (a mod 10^(k+1)) + (b mod 10^(k+1)) >= 10^(k+1)."""
    g = torch.Generator().manual_seed(0)
    for _ in range(500):
        a, b = (int(x) for x in torch.randint(0, 10**6, (2,), generator=g))
        carries = [(a % 10 ** (k + 1)) + (b % 10 ** (k + 1)) >= 10 ** (k + 1) for k in range(8)]
        best = run = 0
        for c in carries:
            run = run + 1 if c else 0
            best = max(best, run)
        assert addition.longest_carry_chain(a, b) == best
    with pytest.raises(ValueError, match="operands"):
        addition.longest_carry_chain(-1, 3)


def test_addition_oracle_is_units_digit_first():
    task = AdditionTask(min_digits=4, max_digits=4, width=4)
    ex = next(e for e in task.generate(20, torch.Generator().manual_seed(0)))
    rank = task.oracle_rank(ex)
    assert len(rank) == task.gen_length == 6 and len(ex.answer) == 5
    assert rank == [4, 3, 2, 1, 0, -1]  # 5 digits, units (position 4) first, EOS tail -1
    assert addition.oracle_rank(12, 345) == [2, 1, 0]  # natural format, 357
    assert addition.oracle_rank(12, 345, gen_length=5) == [2, 1, 0, -1, -1]
    assert task.difficulty(ex) == {"carry_chain": addition.longest_carry_chain(**ex.data)}
    with pytest.raises(ValueError, match="gen_length"):
        addition.oracle_rank(500, 500, gen_length=3)


# ----------------------------------------------------------------------------- sudoku

HAND = "1000/0002/4003/0000"  # the first puzzle of sudoku_4x4_4, worked by hand
# round 1: (0,3) row 1, col 2 3, box 2 -> 4; (1,0) row 2, col 1 4, box 1 -> 3
# round 2: (0,1)=2 (0,2)=3 (1,1)=4 (1,2)=1 (3,0)=2 (3,3)=1; round 3: the four centre-bottom cells
HAND_RANK = [0, 2, 2, 1, 1, 2, 2, 0, 0, 3, 3, 0, 2, 3, 3, 2]
# a deadly rectangle: (0,0) (0,1) (2,0) (2,1) hold 1 2 / 2 1 in one solution, 2 1 / 1 2 in the
# other; every blank keeps candidates {1, 2}, so no naked single exists
RECT = "0034/3412/0043/4321"


def test_propagate_hand_worked_puzzle():
    filled, round_of = sudoku.propagate(grid(HAND))
    assert sudoku.format_grid(filled) == "1234/3412/4123/2341"
    assert [max(r, 0) for r in round_of] == HAND_RANK
    assert sudoku.oracle_rank(grid(HAND)) == HAND_RANK
    assert sudoku.difficulty(grid(HAND)) == (12, 0, 3)


def test_unforced_cells_get_the_last_rank_and_every_completion_verifies():
    puzzle = grid(RECT)
    filled, round_of = sudoku.propagate(puzzle)
    assert filled == puzzle and round_of.count(-1) == 4
    assert sudoku.difficulty(puzzle) == sudoku.Difficulty(n_blanks=4, n_unforced=4, n_rounds=0)
    rank = sudoku.oracle_rank(puzzle)
    assert [i for i, r in enumerate(rank) if r == 1] == [0, 1, 8, 9] and max(rank) == 1
    task = SudokuTask()
    ex = task._example("x", puzzle, grid("1234/3412/2143/4321"))
    assert task.verify(ex, "1234/3412/2143/4321") and task.verify(ex, "2134/3412/1243/4321")
    assert not task.verify(ex, "2134/3412/2143/4321")


def test_oracle_response_rank_layout():
    rank = SudokuTask().oracle_rank(SudokuTask()._example("x", grid(HAND), grid(HAND)))
    assert len(rank) == 20
    assert [rank[p] for p in sudoku.CELL_POSITIONS] == HAND_RANK
    assert [i for i, r in enumerate(rank) if r == -1] == [4, 9, 14, 19]  # '/' x3 and EOS
    assert "".join("1234/3412/4123/2341"[p] for p in sudoku.CELL_POSITIONS) == "1234341241232341"


def test_propagate_rejects_bad_and_contradictory_puzzles():
    with pytest.raises(ValueError, match="16 digits"):
        sudoku.propagate((5,) * 16)
    with pytest.raises(ValueError, match="no candidate"):
        sudoku.propagate(grid("1230/0004/0000/0000"))  # cell 3: row has 1 2 3, column 4


def test_every_real_file_still_verifies_and_is_solved_by_propagation():
    task = SudokuTask()
    for givens in range(4, 13):
        path = DATA / f"sudoku_4x4_{givens}.jsonl"
        raw = [json.loads(line) for line in path.read_text().splitlines()]
        examples = task.load(path)
        for ex, rec in zip(examples, raw, strict=True):
            puzzle = grid(ex.data["puzzle"])
            d = task.difficulty(ex)
            assert d["n_blanks"] == 16 - givens  # the file name counts givens
            assert task.verify(ex, rec["output"])
            # every Dream puzzle is unique and solved by naked singles alone
            filled, _ = sudoku.propagate(puzzle)
            assert d["n_unforced"] == 0 and sudoku.format_grid(filled) == ex.answer


def test_blanks_range_spec_and_generator():
    task = make_task("sudoku:n_blanks=4,max_blanks=8")
    assert task == SudokuTask(n_blanks=4, max_blanks=8)
    exs = task.generate(400, torch.Generator().manual_seed(0))
    counts = {e.data["puzzle"].count("0") for e in exs}
    assert counts == {4, 5, 6, 7, 8}
    assert all(task.verify(e, e.answer) for e in exs)
    # a fixed count draws exactly what it drew before the range existed
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert SudokuTask(n_blanks=6, max_blanks=6).generate(20, g1) == SudokuTask(6).generate(20, g2)
    for bad in ("sudoku:n_blanks=8,max_blanks=4", "sudoku:n_blanks=4,max_blanks=17"):
        with pytest.raises(ValueError, match="max_blanks"):
            make_task(bad)
