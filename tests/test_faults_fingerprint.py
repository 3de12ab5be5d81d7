"""Issue 21, resumes that silently mixed data: prompts edited or weights replaced at the same
path (distill), a LoRA base replaced at the same path (train). Also the fingerprint itself:
a sampled large file sees a changed block and ignores a copy's new modification time."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tabom.cli import main
from tabom.models import build_tiny, save_model
from test_faults_files import flag, one_line_error, train_argv
from test_faults_resume import SMALL, distill_argv, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")  # model_dir, one_thread: conftest.py


@pytest.fixture
def own_model(tmp_path) -> Path:
    """A model folder of this test alone (its weights get replaced)."""
    path = tmp_path / "m"
    save_model(build_tiny(SMALL, seed=0), path)
    return path


def _replace_weights(folder: Path, seed: int = 1) -> None:
    """Other weights of the same shape at the same path."""
    shutil.rmtree(folder)
    save_model(build_tiny(SMALL, seed=seed), folder)


def _prompt_file(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def _distill_file_argv(model: Path, prompts: Path, out: Path) -> list[str]:
    return distill_argv(
        str(model),
        out,
        task="none",
        prompts_file=str(prompts),
        n_prompts="4",
        gen_length="4",
    )


def test_distill_refuses_a_prompts_file_edited_at_the_same_path(own_model, tmp_path, capsys):
    prompts = _prompt_file(tmp_path / "p.jsonl", ["1+2=", "3+4=", "5+6=", "7+8="])
    out = tmp_path / "t.jsonl"
    assert main(_distill_file_argv(own_model, prompts, out)) == 0
    _prompt_file(prompts, ["1+2=", "9+9=", "5+6=", "7+8="])  # p-2 edited, same ids
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(_distill_file_argv(own_model, prompts, out)) == 2
    one_line_error(capsys, "prompts_file", "p.jsonl", "'p-2'")
    assert snapshot(tmp_path) == before
    # more prompts appended (n_prompts grows): the shared ones are the same, it continues
    _prompt_file(prompts, ["1+2=", "3+4=", "5+6=", "7+8=", "2+2="])
    argv = _distill_file_argv(own_model, prompts, out)
    assert main([*argv, "--n_prompts", "5"]) == 0


def test_distill_refuses_model_weights_replaced_at_the_same_path(own_model, tmp_path, capsys):
    prompts = _prompt_file(tmp_path / "p.jsonl", ["1+2=", "3+4="])
    out = tmp_path / "t.jsonl"
    assert main(_distill_file_argv(own_model, prompts, out)) == 0
    _replace_weights(own_model)
    capsys.readouterr()
    assert main(_distill_file_argv(own_model, prompts, out)) == 2
    one_line_error(capsys, "model", str(own_model), "weights")


def test_train_refuses_a_lora_base_replaced_at_the_same_path(own_model, tmp_path, capsys):
    traj = tmp_path / "t.jsonl"
    assert main(distill_argv(str(own_model), traj, n_prompts="4")) == 0
    out = tmp_path / "run"
    lora = [flag("lora_rank"), "2", flag("save_every"), "1", flag("max_steps"), "2"]
    assert main(train_argv(str(own_model), traj, out, *lora)) == 0
    _replace_weights(own_model)
    capsys.readouterr()
    assert main(train_argv(str(own_model), traj, out, *lora, "--resume")) == 2
    one_line_error(capsys, "model_weights")


def test_a_sampled_fingerprint_sees_a_changed_block_and_not_a_copy(tmp_path, monkeypatch):
    from tabom import fingerprint

    monkeypatch.setattr(fingerprint, "FULL_HASH_BYTES", 1 << 16)  # sample files over 64 KiB
    data = bytearray(os.urandom(1 << 20))
    a = tmp_path / "a" / "model.safetensors"
    a.parent.mkdir()
    a.write_bytes(bytes(data))
    first = fingerprint.weights_fingerprint(a.parent)
    b = tmp_path / "b" / "model.safetensors"
    b.parent.mkdir()
    shutil.copyfile(a, b)  # a new modification time, the same bytes
    os.utime(b, (1, 1))
    assert fingerprint.weights_fingerprint(b.parent) == first
    data[-5] ^= 1  # the last block is always sampled
    a.write_bytes(bytes(data))
    assert fingerprint.weights_fingerprint(a.parent) != first
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        fingerprint.weights_fingerprint(tmp_path / "empty")  # no weight file
