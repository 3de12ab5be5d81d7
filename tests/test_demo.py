"""``tabom demo``: stage skipping, held-out splits, verdict arithmetic, and the quick run end to end."""

from __future__ import annotations

import json
import multiprocessing
import sys
import threading

import pytest

from tabom.cli import main
from tabom.commands.demo.config import DemoConfig, read_preset
from tabom.commands.demo.pipeline import (
    distill_settings,
    draw,
    make_splits,
    run_stage,
    train_settings,
)
from tabom.commands.demo.report import compare
from tabom.config import build_config
from tabom.metrics import mean_std
from tabom.objectives import LossConfig


def test_run_stage_skips_a_finished_stage_and_reruns_a_changed_one(tmp_path):
    calls = []

    def fn(folder):
        calls.append(folder)
        (folder / "out.txt").write_text("x")
        return {"n": len(calls)}

    first = run_stage(tmp_path / "s", {"a": 1}, fn)
    again = run_stage(tmp_path / "s", {"a": 1}, fn)
    assert len(calls) == 1 and again["cached"] and again["result"] == first["result"]
    changed = run_stage(tmp_path / "s", {"a": 2}, fn)
    assert len(calls) == 2 and not changed["cached"] and changed["result"] == {"n": 2}


def _hold_stage(folder, started, release):
    def fn(f):
        started.set()
        release.wait(60)
        (f / "out.txt").write_text("A")
        return {"by": "A"}

    run_stage(folder, {"a": 1}, fn)


def _in_thread(call):
    out = {}
    thread = threading.Thread(target=lambda: out.update(call()), daemon=True)
    thread.start()
    return thread, out


needs_flock = pytest.mark.skipif(sys.platform == "win32", reason="no fcntl: no stage lock there")


@needs_flock
def test_a_second_process_waits_for_a_running_stage_and_reads_its_result(tmp_path):
    """Two demo processes on one folder: the second waits for the stage the first is running
    (before the lock it cleared the first one's folder and ran the stage again)."""
    ctx = multiprocessing.get_context("fork")
    started, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_stage, args=(tmp_path / "s", started, release))
    holder.start()
    try:
        assert started.wait(60)
        calls = []

        def fn(f):
            calls.append(f)
            return {"by": "B"}

        thread, out = _in_thread(lambda: run_stage(tmp_path / "s", {"a": 1}, fn))
        thread.join(1.0)
        assert thread.is_alive() and calls == []  # waiting, not redoing the stage
        release.set()
        thread.join(60)
        holder.join(60)
        assert not thread.is_alive() and holder.exitcode == 0
        assert calls == [] and out["cached"] and out["result"] == {"by": "A"}
        assert (tmp_path / "s" / "out.txt").read_text() == "A"
    finally:
        release.set()
        holder.join(60)


@needs_flock
def test_a_killed_process_leaves_no_stale_stage_lock(tmp_path):
    ctx = multiprocessing.get_context("fork")
    started, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_stage, args=(tmp_path / "s", started, release))
    holder.start()
    assert started.wait(60)
    holder.kill()
    holder.join(60)
    thread, out = _in_thread(lambda: run_stage(tmp_path / "s", {"a": 1}, lambda f: {"by": "B"}))
    thread.join(60)
    assert not thread.is_alive() and out["result"] == {"by": "B"} and not out["cached"]


def test_quick_fills_only_fields_left_at_default():
    cfg = build_config(DemoConfig, {"quick": True, "seeds": [5]})
    assert cfg.seeds == [5] and cfg.distill_prompts == read_preset("quick")["distill_prompts"]
    assert cfg.output_dir == "runs/demo-quick"
    assert build_config(DemoConfig, {}) == DemoConfig()


def test_splits_are_disjoint_from_the_distillation_prompts():
    cfg = DemoConfig(distill_prompts=300, test_examples=200, val_examples=100, old_examples=50)
    s = make_splits(cfg)
    ids = {k: {ex.id for ex in v} for k, v in s.items()}
    assert len(ids["test"]) == 200 and len(ids["val"]) == 100 and len(ids["old_test"]) == 50
    assert not ids["distill"] & ids["test"] and not ids["distill"] & ids["val"]
    assert not ids["test"] & ids["val"]


def test_draw_refuses_too_few_held_out_problems():
    import torch

    from tabom.tasks import make_task

    task = make_task("addition")
    taken = {ex.id for ex in task.generate(205, torch.Generator().manual_seed(0))}
    assert len(draw(task, 5, 0, set())) == 5
    with pytest.raises(ValueError, match="only 0 held-out problems"):
        draw(task, 5, 0, taken)


def test_stage_keys_follow_what_the_stages_depend_on():
    cfg = DemoConfig(distill_prompts=50, test_examples=20, val_examples=10, pass_examples=5)
    splits = make_splits(cfg)
    key = distill_settings(cfg, splits)
    # the validation ids (alignment prompts) enter the distill stage's key
    other = {**splits, "val": splits["val"][:-1]}
    assert distill_settings(cfg, other) != key
    a = train_settings(cfg, "td", 0, 10, "k")
    b = train_settings(DemoConfig(loss=LossConfig(td_cut_range="inclusive")), "td", 0, 10, "k")
    assert a != b and a["loss"]["td_cut_range"] == "design"
    # every loss field is in the key, derived from the group (no hand-kept list)
    assert set(a["loss"]) == {f for f in LossConfig.__dataclass_fields__}
    c = train_settings(DemoConfig(loss=LossConfig(rank_ties="reference")), "td", 0, 10, "k")
    assert c != a
    # and every decode field of the distillation enters the distill stage's key
    hot = DemoConfig(distill_prompts=50, test_examples=20, val_examples=10, pass_examples=5)
    hot.decode.top_k = 5
    assert distill_settings(hot, splits) != key


def test_the_distill_key_follows_the_base_weights_at_the_same_name(tmp_path):
    """Weights replaced under the same name or folder (a new shipped ``tiny-longadd``) give
    another distill key, so a rerun in an old run folder does not reuse the old base's stages."""
    import shutil

    from tabom.models import SHIPPED

    folder = tmp_path / "base"
    shutil.copytree(SHIPPED["tiny-base"], folder)
    cfg = DemoConfig(
        model=str(folder), distill_prompts=50, test_examples=20, val_examples=10, pass_examples=5
    )
    splits = make_splits(cfg)
    key = distill_settings(cfg, splits)
    assert distill_settings(cfg, splits) == key  # stable
    shutil.copy(SHIPPED["tiny-sudoku"] / "model.safetensors", folder / "model.safetensors")
    assert distill_settings(cfg, splits) != key


def test_sweep_points_override_demo_fields():
    from tabom.commands.demo.pipeline import point_config
    from tabom.commands.demo.sweep import SweepConfig, sweep_points

    demo = DemoConfig()
    for _, point in sweep_points(SweepConfig()):
        cfg = point_config(demo, point)  # every key is a DemoConfig or LossConfig field
        for k, v in point.items():
            if k != "data_fraction":
                assert getattr(cfg.loss, k, getattr(cfg, k, None)) == v
    with pytest.raises(ValueError, match="data_fraction"):
        SweepConfig(data_fraction=[1.5])


def test_compare_uses_two_standard_errors():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(2**0.5))
    assert compare([0.5, 0.5, 0.5], [0.2, 0.2, 0.2])[1] == "better"
    assert compare([0.1, 0.9], [0.4, 0.5])[1] == "no clear difference"
    diff, word = compare([0.1, 0.1], [0.3, 0.3], higher_is_better=False)
    assert diff == pytest.approx(-0.2) and word == "better"  # less forgetting is better


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output_dir", str(out), "--progress", "false"]) == 0
    printed = capsys.readouterr().out  # the main table at the end, above the report's path
    assert "| model | runs |" in printed.split("demo: wrote")[0].rsplit("[4/4]", 1)[-1]
    report = (out / "report.md").read_text()
    for png in ("accuracy.png", "budgets.png", "entropy.png", "trajectory.png"):
        assert (out / png).stat().st_size > 1000 and f"({png})" in report
    table = [line for line in report.splitlines() if line.startswith("| ")]
    for model in ("base", "sft", "traj-sft", "td", "**tabom**"):
        assert any(line.startswith(f"| {model} |") for line in table), model
    assert "Verdict" in report and "pass@8" in report
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert len(rows["tabom"]["old"]) == 2 and rows["base"]["forgetting"] == [0.0]
    capability = json.loads((out / "report.json").read_text())["capability"]  # issue 22
    assert set(capability) == {"sft", "traj-sft", "td", "tabom"}
    assert all(v["verdict"] for v in capability.values()) and "NELBO/token new" in report
    # a second run skips every finished stage: no model, trajectory or evaluation is rewritten
    # (a behaviour, not a time: timings belong in benchmarks/)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    stages = [p for p in stamps if p.suffix in (".safetensors", ".jsonl")]
    assert stages
    assert main(["demo", "--quick", "--output_dir", str(out), "--progress", "false"]) == 0
    assert all(p.stat().st_mtime_ns == stamps[p] for p in stages)
    report = (out / "report.md").read_text()
    assert "cached" in report and "it reused finished stages" in report  # honest wall time


def test_inclusive_cut_range_reaches_the_last_decode_step():
    import torch

    from tabom.masking import time_delay_mask

    ids = torch.tensor([[5, 6, 1, 1, 1, 1, 1, 1]])  # prompt of 2, response of 6
    resp = torch.tensor([[False, False] + [True] * 6])
    d = torch.tensor([[-1, -1, 3, 0, 5, 1, 2, 4]])
    kw = {"response_mask": resp, "window": 3, "mask_token_id": 9}
    plans = [
        time_delay_mask(
            ids, d, generator=torch.Generator().manual_seed(i), cut_range="inclusive", **kw
        )
        for i in range(64)
    ]
    assert {int(p.cut) for p in plans} == {0, 1, 2, 3}  # DESIGN §5's range is {0, 1, 2}
    for p in plans:
        s = int(p.cut)
        assert torch.equal(p.supervise, (d >= s) & (d < s + 3))
        assert torch.equal(p.input_ids == 9, resp & (d >= s))
    assert any(bool(p.supervise[0, 4]) for p in plans)  # d = 5, the last step, is supervised
    plain = [
        time_delay_mask(ids, d, generator=torch.Generator().manual_seed(i), **kw) for i in range(64)
    ]
    assert not any(bool(p.supervise[0, 4]) for p in plain)
