"""Issue 21, code that runs without being asked: a model folder's ``tabom_backend.json`` naming
remote code, a pickle in a pretrain checkpoint, and a tokenizer named inside a trajectory file.
The two code-execution cases plant code that writes a marker file and assert it is absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tabom.checkpoint import STATE_FILE, manifest
from tabom.cli import main
from tabom.plots import token_labels
from tabom.trajectory import read_trajectories
from test_faults_files import distill_argv, one_line_error
from test_faults_resume import pretrain_argv

pytestmark = pytest.mark.usefixtures("one_thread")  # model_dir, one_thread: conftest.py


def _evil_remote_folder(path: Path, marker: Path, backend: str) -> Path:
    """A model folder whose config's remote code writes ``marker`` when imported."""
    path.mkdir(parents=True)
    (path / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('remote code ran')\n"
        "from transformers import PretrainedConfig\n\n\n"
        "class EvilConfig(PretrainedConfig):\n"
        f"    model_type = {'llada' if backend.startswith('llada') else 'Dream'!r}\n"
    )
    config = {
        "model_type": "llada" if backend.startswith("llada") else "Dream",
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"},
    }
    (path / "config.json").write_text(json.dumps(config))
    (path / "tabom_backend.json").write_text(json.dumps({"backend": backend}))
    return path


@pytest.mark.parametrize("backend", ["llada-remote", "dream-remote"])
@pytest.mark.parametrize("command", ["eval", "distill"])
def test_a_folder_naming_remote_code_does_not_run_it_under_auto(tmp_path, capsys, backend, command):
    marker = tmp_path / "marker"
    folder = _evil_remote_folder(tmp_path / f"evil_{command}_{backend[:5]}", marker, backend)
    argv = [command, "--model", str(folder), "--num_threads", "1"]
    if command == "distill":
        argv += ["--output", str(tmp_path / "t.jsonl"), "--progress", "false"]
    assert main(argv) == 2
    assert not marker.exists(), "the folder's Python file ran"
    one_line_error(capsys, "tabom_backend.json", backend, "--trust_remote_code")


class _Evil:
    """Unpickling this writes the marker (what a crafted ``custom_checkpoint_0.pkl`` does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pickle ran')",))


def test_pretrain_resume_does_not_unpickle_a_planted_custom_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(pretrain_argv(out)) == 0
    ckpt = out / "checkpoints" / "step-4"
    marker = tmp_path / "marker"
    torch.save(_Evil(marker), ckpt / "custom_checkpoint_0.pkl")
    state = json.loads((ckpt / STATE_FILE).read_text())
    state["files"] = manifest(ckpt)  # anyone can rewrite the sha256 list
    (ckpt / STATE_FILE).write_text(json.dumps(state))
    capsys.readouterr()
    assert main(pretrain_argv(out, "--resume")) == 2
    assert not marker.exists(), "the checkpoint's pickle ran"
    one_line_error(capsys, "custom_checkpoint_0.pkl")


def test_pretrain_checkpoints_hold_no_pickle_of_the_generators(tmp_path):
    out = tmp_path / "run"
    assert main(pretrain_argv(out)) == 0
    ckpt = out / "checkpoints" / "step-4"
    assert not list(ckpt.glob("custom_checkpoint_*"))
    assert (ckpt / "generators-0.safetensors").is_file()


def test_inspect_loads_no_tokenizer_named_only_inside_the_file(model_dir, tmp_path, monkeypatch):
    traj = tmp_path / "t.jsonl"
    assert main(distill_argv(model_dir, traj)) == 0
    record = read_trajectories(traj)[0]
    assert record.gen["model"] == model_dir  # the file names a folder with a matching tokenizer
    opened: list[str] = []
    from transformers import AutoTokenizer

    real = AutoTokenizer.from_pretrained.__func__

    def spy(cls, name, *a, **k):
        opened.append(str(name))
        return real(cls, name, *a, **k)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(spy))
    labels, note = token_labels(record, None)
    assert labels is None and "--tokenizer" in note and opened == []
    labels, note = token_labels(record, model_dir)  # where the user points: loaded
    assert labels is not None and opened == [model_dir]
