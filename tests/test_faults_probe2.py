"""Issue 21, the second fault probe: inputs that gave a traceback (each must be one line and
exit 2) and inputs that gave a silently wrong result (exit 0), through ``main(argv)``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

import tabom
from tabom.cli import load_config, main
from tabom.models import load_model
from test_faults_files import (
    TASK,
    distill_argv,
    flag,
    one_line_error,
    rows,
    train_argv,
    write_rows,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # model_dir, one_thread: conftest.py
SRC = str(Path(tabom.__file__).resolve().parent.parent)  # the tabom under test


@pytest.fixture(scope="module")
def traj(model_dir, tmp_path_factory) -> Path:
    """8 records of the random tiny model (4 prompts x 2 samples)."""
    path = tmp_path_factory.mktemp("traj2") / "t.jsonl"
    assert main(distill_argv(model_dir, path)) == 0
    return path


# --------------------------------------------------------------------------- tracebacks


def test_inspect_of_an_id_with_a_lone_surrogate_is_one_line(traj, tmp_path, capsys):
    items = rows(traj)[:1]
    items[0]["prompt_id"], items[0]["id"] = "x\ud800", "x\ud800#0"
    path = write_rows(tmp_path / "s.jsonl", items)  # json.dumps writes "\ud800"
    assert main(["inspect", str(path), "--png", str(tmp_path / "s.png")]) == 2
    one_line_error(capsys, "s.jsonl:1", "id", "surrogate")


def test_distill_on_an_empty_model_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["distill", "--model", str(tmp_path / "empty"), "--output", "x.jsonl"]) == 2
    one_line_error(capsys, "empty", "backend")


@pytest.mark.parametrize("kind", ["folder", "txt"])
def test_distill_prompts_from_a_folder_or_txt_is_one_line_without_datasets(
    model_dir, tmp_path, capsys, monkeypatch, kind
):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` -> ImportError
    source = tmp_path / ("prompts" if kind == "folder" else "prompts.txt")
    if kind == "folder":
        source.mkdir()
    else:
        source.write_text("1+2=\n")
    argv = distill_argv(model_dir, tmp_path / "t.jsonl", "--prompts_file", str(source))
    assert main(argv) == 2
    one_line_error(capsys, "prompts_file", source.name, "datasets" if kind == "folder" else ".jsonl")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("n_prompts: [1\n", "line 2"),
        ("n_prompts: !!python/object/apply:os.system ['echo hi']\n", "python"),
        ("decode:\n\ttemperature: 1\n", "tabs"),
    ],
)
def test_a_config_file_that_is_not_plain_yaml_is_one_line(tmp_path, capsys, text, needle):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["distill", "--config", str(path)]) == 2
    one_line_error(capsys, "c.yaml", "not valid YAML", needle)


def test_distill_to_an_empty_output_name_is_one_line(capsys):
    assert main(["distill", "--output", ""]) == 2
    one_line_error(capsys, "--output")


def test_train_on_lora_targets_the_model_lacks_is_one_line(model_dir, traj, tmp_path, capsys):
    argv = train_argv(model_dir, traj, tmp_path / "run", flag("lora_rank"), "2")
    assert main([*argv, flag("lora_targets"), "no_such_module"]) == 2
    one_line_error(capsys, "lora_targets", "no_such_module", "q_proj")


def test_train_with_a_learning_rate_that_overflows_adamw_is_one_line(
    model_dir, traj, tmp_path, capsys
):
    assert main(train_argv(model_dir, traj, tmp_path / "run", flag("lr"), "1e38")) == 2
    one_line_error(capsys, "--lr", "1e+30")


@pytest.mark.parametrize("lr", ["1e10", "1e29"])
def test_train_stops_on_a_non_finite_gradient_keeping_the_last_good_checkpoint(
    model_dir, traj, tmp_path, capsys, lr
):
    out = tmp_path / "run"
    argv = train_argv(model_dir, traj, out, flag("lr"), lr, flag("warmup_steps"), "0")
    argv += [flag("max_steps"), "4", flag("save_every"), "1", flag("grad_clip"), "0"]
    assert main(argv) == 2
    one_line_error(capsys, "non-finite", "checkpoints/step-")
    assert not (out / "model").exists()  # nothing non-finite saved as the result
    saved = sorted((out / "checkpoints").glob("step-*"))
    assert saved, "the good steps before are kept"
    for ckpt in saved:
        weights = load_file(str(ckpt / "model.safetensors"))
        assert all(bool(v.isfinite().all()) for v in weights.values()), ckpt


def test_eval_with_an_adapter_folder_that_is_empty_is_one_line(model_dir, tmp_path, capsys):
    (tmp_path / "adapter").mkdir()
    argv = ["eval", "--model", model_dir, "--adapter", str(tmp_path / "adapter")]
    assert main([*argv, "--tasks", TASK, "--n_examples", "2"]) == 2
    one_line_error(capsys, "adapter", "adapter_config.json")


def test_eval_with_a_gen_length_shorter_than_the_task_is_refused_before_loading(
    tmp_path, capsys, monkeypatch
):
    import tabom.commands.eval as ev

    monkeypatch.setattr(ev, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    argv = ["eval", "--tasks", TASK, "--n_examples", "2", "--decode.gen_length", "3"]
    assert main(argv) == 2
    one_line_error(capsys, "gen_length 3", "6")


def test_pretrain_with_zero_task_weights_is_one_line(tmp_path, capsys):
    argv = ["pretrain", "--task_weights", "0", "--steps", "1", "--output_dir", str(tmp_path)]
    assert main(argv) == 2
    one_line_error(capsys, "task_weights")


def test_train_on_a_full_disk_while_saving_safetensors_is_one_line(
    model_dir, traj, tmp_path, capsys, monkeypatch
):
    from accelerate import Accelerator
    from safetensors import SafetensorError

    def full(self, *a, **k):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        )

    monkeypatch.setattr(Accelerator, "save_state", full)
    assert main(train_argv(model_dir, traj, tmp_path / "run", flag("save_every"), "1")) == 2
    one_line_error(capsys, "No space left on device")


def test_help_into_a_closed_pipe_ends_quietly():
    """`tabom demo --help | head`: the reader is gone before the text is written."""
    env = {**os.environ, "PYTHONPATH": SRC}
    code = "import sys; from tabom.cli import main; sys.exit(main(['demo', '--help']))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    proc.stdout.close()  # like `head` that has read its lines
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


# --------------------------------------------------------------------------- silently wrong


def test_eval_of_no_tasks_and_distill_of_no_ks_are_refused(capsys):
    assert main(["eval", "--tasks", ""]) == 2
    one_line_error(capsys, "--tasks")
    assert main(["distill", "--ks", ""]) == 2
    one_line_error(capsys, "--ks")


def test_a_task_spec_with_commas_is_one_spec():
    from tabom.commands.eval import EvalConfig

    spec = "addition:min_digits=1,max_digits=3,width=4"
    cfg = load_config(EvalConfig, None, ["--tasks", f"{spec},{TASK}"])
    assert cfg.tasks == [spec, TASK]
    cfg = load_config(EvalConfig, None, ["--tasks", f"{spec}@data/x.jsonl"])
    assert cfg.tasks == [f"{spec}@data/x.jsonl"]


def test_inspect_png_into_a_folder_writes_inside_it_and_says_so(traj, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "pics"
    folder.mkdir()
    assert main(["inspect", str(traj), "--png", str(folder)]) == 0
    written = list(folder.glob("*.png"))
    assert len(written) == 1 and not (tmp_path / "pics.png").exists()
    assert f"-> {written[0]} " in capsys.readouterr().out


def _temperature(r, mask):
    r["gen"]["temperature"] = -1.0


def _top_p(r, mask):
    r["gen"]["top_p"] = 7.5


def _entropy(r, mask):
    r["decode_entropy"][0] = -0.5


def _mask_in_prompt(r, mask):
    r["prompt_token_ids"][0] = mask


def _never_decoded(r, mask):
    r["decoding_order"] = [-1] * len(r["decoding_order"])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_temperature, "gen.temperature"),
        (_top_p, "gen.top_p"),
        (_entropy, "decode_entropy"),
        (_mask_in_prompt, "prompt_token_ids"),
        (_never_decoded, "decoding_order"),
    ],
)
def test_train_refuses_dubious_records_naming_file_line_field(
    model_dir, traj, tmp_path, capsys, change, field
):
    items = rows(traj)
    change(items[2], load_model(model_dir).mask_token_id)
    path = write_rows(tmp_path / "d.jsonl", items)
    assert main(train_argv(model_dir, path, tmp_path / "run")) == 2
    one_line_error(capsys, "d.jsonl:3", repr(field))


def test_train_refuses_one_prompt_id_with_two_prompts(model_dir, traj, tmp_path, capsys):
    items = rows(traj)
    assert items[0]["prompt_id"] == items[1]["prompt_id"]
    items[1]["prompt"] = items[1]["prompt"] + " "
    path = write_rows(tmp_path / "d.jsonl", items)
    assert main(train_argv(model_dir, path, tmp_path / "run")) == 2
    one_line_error(capsys, "d.jsonl:2", "'prompt'", "line 1")


def test_the_records_distill_writes_pass_every_new_check(traj):
    """The checks refuse only what distill never writes."""
    for r in rows(traj):
        assert r["gen"]["temperature"] >= 0 and 0 < r["gen"]["top_p"] <= 1
        assert max(r["decoding_order"]) >= 0
        assert all(h is None or (math.isfinite(h) and h >= 0) for h in r["decode_entropy"])
    assert json.loads(traj.read_text().splitlines()[0])["id"].endswith("#0")
