"""The long-addition task (issue 19's third testbed): instances, the carry-propagation cap,
the verifier, difficulty and the oracle order."""

from __future__ import annotations

import pytest
import torch

from tabom.tasks import make_task
from tabom.tasks.long_addition import nine_runs


def test_instances_are_fixed_width_sums_with_a_capped_number_of_propagating_columns():
    old = make_task("longadd:digits=48,max_nines=0")
    new = make_task("longadd:digits=48")
    capped = make_task("longadd:digits=48,max_nines=2")
    g = torch.Generator().manual_seed(0)
    for task, cap in ((old, 0), (capped, 2), (new, None)):
        exs = task.generate(200, g)
        assert task.gen_length == 50
        nines = []
        for ex in exs:
            a, b = ex.data["a"], ex.data["b"]
            assert len(a) == len(b) == 48 and ex.prompt == f"{a}+{b}="
            assert len(ex.answer) == 49 and int(ex.answer) == int(a) + int(b)
            assert task.verify(ex, ex.answer) and task.verify(ex, str(int(ex.answer)))
            assert not task.verify(ex, str(int(ex.answer) + 1)) and not task.verify(ex, "x")
            n = sum(int(x) + int(y) == 9 for x, y in zip(a, b, strict=True))
            assert task.difficulty(ex)["nines"] == n
            nines.append(n)
        if cap is not None:
            assert max(nines) <= cap
        else:
            assert 3.5 < sum(nines) / len(nines) < 6.0  # 48 columns x P(sum = 9) = 0.1
    assert len({ex.id for ex in new.generate(50, torch.Generator().manual_seed(1))}) == 50


def test_copy_problems_zero_one_operand():
    for zero, keep in (("a", "b"), ("b", "a")):
        task = make_task(f"longadd:digits=12,zero={zero}")
        for ex in task.generate(20, torch.Generator().manual_seed(2)):
            assert ex.data[zero] == "0" * 12 and ex.answer == "0" + ex.data[keep]
            assert task.verify(ex, ex.answer)


def test_nine_runs_and_oracle_order():
    assert nine_runs("1234", "8765") == (4, 4)
    assert nine_runs("1204", "8705") == (3, 2)  # 9, 9, 0, 9
    assert nine_runs("1000", "8000") == (1, 1)
    task = make_task("longadd:digits=4")
    ex = task.generate(1, torch.Generator().manual_seed(0))[0]
    assert task.oracle_rank(ex) == [4, 3, 2, 1, 0, -1]  # units digit first, EOS unranked


@pytest.mark.parametrize("spec", ["longadd:digits=1", "longadd:digits=61", "longadd:digits=4,max_nines=5", "longadd:zero=c"])
def test_bad_settings_are_refused(spec):
    from tabom.tasks import TaskSpecError

    with pytest.raises(TaskSpecError, match="longadd"):
        make_task(spec)
