"""Issue 13, resume: a resume onto other settings is refused naming the setting and both values
and touches no file; damaged or stray checkpoints; no repeated log steps; pretrain resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tabom.cli import main
from tabom.models import TinyModelConfig, build_tiny, save_tiny
from test_faults_files import TASK, flag, one_line_error

SMALL = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64)
MODEL_FLAGS = ["--model.hidden_size", "32", "--model.num_layers", "1", "--model.num_heads", "4"]
MODEL_FLAGS += ["--model.intermediate_size", "64"]


pytestmark = pytest.mark.usefixtures("one_thread")  # model_dir, one_thread: conftest.py


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("model") / "m2"
    save_tiny(build_tiny(SMALL, seed=1), path)
    return str(path)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (names relative to it) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- distill


def distill_argv(model_dir: str, output: Path, **over: str) -> list[str]:
    settings = {
        "model": model_dir,
        "task": TASK,
        "n_prompts": "8",
        "n_samples": "2",
        "ks": "1",
        "prompts_per_batch": "2",
        "keep": "all",
        "progress": "false",
        "num_threads": "1",
        "output": str(output),
        **over,
    }
    return ["distill", *[x for k, v in settings.items() for x in (flag(k), v)]]


def _interrupted(folder: Path, model_dir: str, **over: str) -> Path:
    """A distill run of 4 groups stopped after 2 of them (records and sidecar lines)."""
    out = folder / "t.jsonl"
    assert main(distill_argv(model_dir, out, **over)) == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:4]))  # 2 groups x 2 prompts x 2 samples = 8 records
    progress = Path(f"{out}.progress")
    progress.write_text("".join(progress.read_text().splitlines(keepends=True)[:2]))
    return out


@pytest.mark.parametrize(
    ("name", "first", "second"),
    [
        ("score", "confidence", "entropy"),
        ("keep", "all", "verified"),
        ("seed", "0", "1"),
        ("temperature", "1.0", "0.5"),
        ("top_p", "1.0", "0.9"),
        ("top_k", "0", "3"),
        ("tokens_per_step", "1", "2"),
        ("block_length", "none", "2"),
        ("task", TASK, "addition:min_digits=3,max_digits=4,width=4"),
        ("split", "train", "test"),
    ],
)
def test_a_distill_resume_onto_other_settings_is_refused_and_touches_nothing(
    model_dir, tmp_path, capsys, name, first, second
):
    out = _interrupted(tmp_path, model_dir, **{name: first})
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(distill_argv(model_dir, out, **{name: second})) == 2
    err = one_line_error(capsys, "t.jsonl", name)
    shown = {"none": "None"}.get(first, first)
    assert shown in err and second in err, err
    assert snapshot(tmp_path) == before
    assert main(distill_argv(model_dir, out, **{name: first})) == 0  # the same settings finish it


def test_a_distill_resume_onto_another_model_is_refused(
    model_dir, other_model_dir, tmp_path, capsys
):
    out = _interrupted(tmp_path, model_dir)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(distill_argv(other_model_dir, out)) == 2
    one_line_error(capsys, "model", model_dir, other_model_dir)
    assert snapshot(tmp_path) == before


def test_a_finished_verified_file_rerun_with_keep_all_is_refused(model_dir, tmp_path, capsys):
    out = tmp_path / "v.jsonl"
    assert main(distill_argv(model_dir, out, keep="verified")) == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(distill_argv(model_dir, out, keep="all")) == 2
    one_line_error(capsys, "keep", "verified", "all")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- train


def train_argv(model_dir: str, data: Path, out: Path, **over: str) -> list[str]:
    settings = {
        "model": model_dir,
        "data": str(data),
        "output_dir": str(out),
        "objective": "tabom",
        "max_steps": "6",
        "batch_size": "4",
        "grad_accum": "2",
        "lr": "0.01",
        "warmup_steps": "1",
        "lora_rank": "0",
        "td_window": "3",
        "rank_window": "3",
        "save_every": "2",
        "progress": "false",
        "num_threads": "1",
        **over,
    }
    return ["train", *[x for k, v in settings.items() for x in (flag(k), v)]]


@pytest.fixture(scope="module")
def traj(model_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("traj") / "t.jsonl"
    argv = distill_argv(model_dir, path, prompts_per_batch="8")
    assert main(argv) == 0
    return path


@pytest.fixture(scope="module")
def full_run(model_dir, traj, tmp_path_factory) -> Path:
    """6 optimizer steps, checkpoints at steps 2, 4 and 6 (the reference for every resume)."""
    out = tmp_path_factory.mktemp("full") / "run"
    assert main(train_argv(model_dir, traj, out)) == 0
    return out


def killed_after(full: Path, folder: Path, step: int) -> Path:
    """A copy of the full run as a kill right after the checkpoint of ``step`` leaves it."""
    out = folder / "run"
    shutil.copytree(full, out)
    for p in (out / "checkpoints").glob("step-*"):
        if int(p.name.split("-")[1]) > step:
            shutil.rmtree(p)
    for name in ("model", "adapter"):
        shutil.rmtree(out / name, ignore_errors=True)
    lines = (out / "log.jsonl").read_text().splitlines(keepends=True)
    (out / "log.jsonl").write_text("".join(x for x in lines if json.loads(x)["step"] <= step))
    return out


def log_steps(out: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]


def log_values(out: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(x).items() if k != "elapsed_s"}
        for x in (out / "log.jsonl").read_text().splitlines()
    ]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("lr", "0.02", "0.01"),
        ("td_window", "2", "3"),
        ("rank_weight", "2.0", "1.0"),
        ("rank_margin", "0.3", "0.1"),
        ("weight_decay", "0.1", "0.01"),
        ("mixed_precision", "bf16", "auto"),
        ("warmup_steps", "2", "1"),
        ("grad_clip", "0.5", "1.0"),
        ("rank_ties", "reference", "strict"),
    ],
)
def test_a_train_resume_onto_other_settings_is_refused_and_touches_nothing(
    model_dir, traj, full_run, tmp_path, capsys, name, value, shown
):
    out = killed_after(full_run, tmp_path, 4)
    before = snapshot(out)
    capsys.readouterr()
    assert main([*train_argv(model_dir, traj, out, **{name: value}), "--resume"]) == 2
    one_line_error(capsys, name, shown, value)
    assert snapshot(out) == before


def test_a_train_resume_onto_a_changed_data_file_of_the_same_size_is_refused(
    model_dir, traj, full_run, tmp_path, capsys
):
    out = killed_after(full_run, tmp_path, 4)
    items = [json.loads(x) for x in traj.read_text().splitlines()]
    items[0], items[1] = items[1], items[0]  # same records, same size, other content order
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in items))
    before = snapshot(out)
    capsys.readouterr()
    assert main([*train_argv(model_dir, data, out), "--resume"]) == 2
    one_line_error(capsys, "data", "sha256")
    assert snapshot(out) == before


def test_a_resume_with_only_cadence_changed_continues_exactly(model_dir, traj, full_run, tmp_path):
    out = killed_after(full_run, tmp_path, 4)
    argv = train_argv(model_dir, traj, out, log_every="1", num_threads="2", progress="false")
    assert main([*argv, "--resume"]) == 0
    assert same_weights(full_run / "model", out / "model")
    assert log_values(out) == log_values(full_run)


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damaged", ["model.safetensors", "random_states_0.pkl", "trainer_state"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(
    model_dir, traj, full_run, tmp_path, damaged
):
    out = killed_after(full_run, tmp_path, 4)
    ckpt = out / "checkpoints" / "step-4"
    if damaged == "trainer_state":
        (ckpt / "trainer_state.json").write_text('{"step": 4, "epo')
    else:
        _damage(ckpt / damaged)
    with pytest.warns(RuntimeWarning, match="step-4"):
        assert main([*train_argv(model_dir, traj, out), "--resume"]) == 0
    assert same_weights(full_run / "model", out / "model")
    assert log_values(out) == log_values(full_run)


def test_every_checkpoint_damaged_is_one_line_exit_2(model_dir, traj, full_run, tmp_path, capsys):
    out = killed_after(full_run, tmp_path, 4)
    for step in (2, 4):
        _damage(out / "checkpoints" / f"step-{step}" / "model.safetensors")
    capsys.readouterr()
    with pytest.warns(RuntimeWarning):
        assert main([*train_argv(model_dir, traj, out), "--resume"]) == 2
    one_line_error(capsys, "step-2")


def test_a_stray_checkpoint_folder_is_ignored(model_dir, traj, full_run, tmp_path):
    out = killed_after(full_run, tmp_path, 4)
    shutil.copytree(out / "checkpoints" / "step-2", out / "checkpoints" / "step-10.bak")
    shutil.copytree(out / "checkpoints" / "step-2", out / "checkpoints" / "step-x")
    assert main([*train_argv(model_dir, traj, out), "--resume"]) == 0
    assert same_weights(full_run / "model", out / "model")


@pytest.mark.parametrize("resume", [True, False])
def test_a_run_killed_before_its_first_checkpoint_logs_each_step_once(
    model_dir, traj, tmp_path, resume
):
    full = tmp_path / "full"
    assert main(train_argv(model_dir, traj, full, save_every="0")) == 0
    out = killed_after(full, tmp_path / "k", 3)
    shutil.rmtree(out / "checkpoints")  # only the final step had one
    assert log_steps(out) == [1, 2, 3]
    argv = train_argv(model_dir, traj, out, save_every="0")
    assert main([*argv, "--resume"] if resume else argv) == 0
    assert log_steps(out) == [1, 2, 3, 4, 5, 6]
    assert log_values(out) == log_values(full)


# --------------------------------------------------------------------------- pretrain


def pretrain_argv(out: Path, *extra: str) -> list[str]:
    settings = {
        "output_dir": str(out),
        "tasks": "addition:max_digits=2",
        "steps": "6",
        "batch_size": "8",
        "save_every": "2",
        "eval_every": "0",
        "eval_examples": "4",
        "warmup_steps": "1",
        "num_threads": "1",
    }
    return [
        "pretrain",
        *[x for k, v in settings.items() for x in (f"--{k}", v)],  # pretrain has no groups
        *MODEL_FLAGS,
        *extra,
    ]


def test_pretrain_resumes_exactly_like_train(tmp_path, capsys):
    full = tmp_path / "full"
    assert main(pretrain_argv(full)) == 0
    out = killed_after(full, tmp_path / "k", 4)
    assert main(pretrain_argv(out)) == 2  # checkpoints and no --resume: refused
    one_line_error(capsys, "--resume")
    assert main(pretrain_argv(out, "--resume")) == 0
    assert same_weights(full / "model", out / "model")
    assert log_values(out) == log_values(full)
    # a resume onto another learning rate is refused, naming both values
    out2 = killed_after(full, tmp_path / "k2", 4)
    capsys.readouterr()
    assert main(pretrain_argv(out2, "--resume", flag("lr"), "0.5")) == 2
    one_line_error(capsys, "lr", "0.5", "0.001")
