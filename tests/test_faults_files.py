"""Issue 13, files: malformed trajectory lines, records that do not fit the model, the distill
data-loss case, and errors that must be one line with exit 2 (not tracebacks), through the CLI."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from tabom.cli import main

# Flag spellings in one place (the command layer may rename them, e.g. to ``--decode.score``);
# the other test_faults_* files import ``flag``, ``TASK`` and ``one_line_error`` from here.
RENAMED: dict[str, str] = {
    **{k: f"decode.{k}" for k in ("score", "temperature", "top_p", "top_k", "steps")},
    **{k: f"decode.{k}" for k in ("gen_length", "tokens_per_step", "block_length", "threshold")},
    **{k: f"loss.{k}" for k in ("td_window", "rank_window", "rank_margin", "rank_weight")},
    **{k: f"loss.{k}" for k in ("rank_ties", "window_unit", "td_cut_range", "nelbo_weight")},
}


def flag(name: str) -> str:
    return "--" + RENAMED.get(name, name)


WRITER = "tabom.jsonl.JsonlWriter"  # the class whose ``write`` a full disk fails
TASK = "addition:min_digits=4,max_digits=4,width=4"  # responses of 6 tokens


pytestmark = pytest.mark.usefixtures("one_thread")  # model_dir, one_thread: conftest.py


def distill_argv(model_dir: str, output: Path, *extra: str) -> list[str]:
    return [
        "distill",
        flag("model"),
        model_dir,
        flag("task"),
        TASK,
        flag("n_prompts"),
        "4",
        flag("n_samples"),
        "2",
        flag("ks"),
        "1",
        flag("prompts_per_batch"),
        "2",
        flag("keep"),
        "all",
        flag("progress"),
        "false",
        flag("num_threads"),
        "1",
        flag("output"),
        str(output),
        *extra,
    ]


@pytest.fixture(scope="module")
def traj(model_dir, tmp_path_factory) -> Path:
    """8 records of the random tiny model (4 prompts x 2 samples)."""
    path = tmp_path_factory.mktemp("traj") / "t.jsonl"
    assert main(distill_argv(model_dir, path)) == 0
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def write_rows(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


def one_line_error(capsys, *needles: str) -> str:
    """The command's error: one ``tabom CMD: error: ...`` line, no traceback, every needle in it
    (progress bars of model loading may share stderr)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("tabom ")]
    assert len(lines) == 1 and ": error: " in lines[0], err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def inspect_argv(path: Path) -> list[str]:
    return ["inspect", str(path), flag("draw"), "false"]


def train_argv(model_dir: str, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        flag("model"),
        model_dir,
        flag("data"),
        str(data),
        flag("output_dir"),
        str(out),
        flag("objective"),
        "td",
        flag("td_window"),
        "3",
        flag("lora_rank"),
        "0",
        flag("max_steps"),
        "1",
        flag("batch_size"),
        "2",
        flag("grad_accum"),
        "1",
        flag("progress"),
        "false",
        *extra,
    ]


# --------------------------------------------------------------------------- the data-loss case


def test_distill_onto_a_notes_file_without_newline_leaves_it_untouched(model_dir, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"meeting notes\nremember: do not lose this line")  # no final newline
    before = notes.read_bytes()
    assert main(distill_argv(model_dir, notes)) == 2
    one_line_error(capsys, "notes.txt")
    assert notes.read_bytes() == before
    assert not (tmp_path / "notes.txt.config.yaml").exists()


def test_a_refused_resume_does_not_cut_a_torn_tail_of_another_runs_file(
    model_dir, traj, tmp_path, capsys
):
    other = tmp_path / "other.jsonl"
    data = traj.read_bytes()
    other.write_bytes(data + data.splitlines(keepends=True)[0][:40])  # valid lines + a torn one
    before = other.read_bytes()
    assert main(distill_argv(model_dir, other, flag("seed"), "7")) == 2  # other settings
    one_line_error(capsys, "other.jsonl", "seed")
    assert other.read_bytes() == before


def test_a_torn_tail_behind_a_bad_line_is_not_cut(model_dir, traj, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    lines = traj.read_bytes().splitlines(keepends=True)
    bad.write_bytes(lines[0] + b"{not json}\n" + lines[1][:30])
    before = bad.read_bytes()
    assert main(distill_argv(model_dir, bad)) == 2
    one_line_error(capsys, "bad.jsonl:2")
    assert bad.read_bytes() == before


def test_a_torn_tail_of_the_same_run_is_dropped_and_rewritten(model_dir, traj, tmp_path):
    torn = tmp_path / "torn.jsonl"
    shutil.copy(traj, torn)
    for sidecar in (".progress", ".config.yaml"):
        if Path(str(traj) + sidecar).exists():
            shutil.copy(str(traj) + sidecar, str(torn) + sidecar)
    lines = traj.read_bytes().splitlines(keepends=True)
    torn.write_bytes(b"".join(lines[:-1]) + lines[-1][:25])  # killed inside the last group:
    progress = Path(str(torn) + ".progress")  # its sidecar line was never written
    progress.write_bytes(b"".join(progress.read_bytes().splitlines(keepends=True)[:-1]))
    with pytest.warns(RuntimeWarning, match="truncated last line"):
        assert main(distill_argv(model_dir, torn)) == 0
    assert torn.read_bytes() == traj.read_bytes()


# --------------------------------------------------------------------------- malformed lines


def test_bare_nan_and_infinity_are_refused(traj, tmp_path, capsys):
    items = rows(traj)
    for token, value in (("NaN", float("nan")), ("Infinity", float("inf"))):
        bad = [dict(r) for r in items[:2]]
        bad[1]["decode_entropy"] = [value, *bad[1]["decode_entropy"][1:]]
        path = write_rows(tmp_path / f"{token}.jsonl", bad)  # json.dumps writes the bare token
        assert token in path.read_text()
        assert main(inspect_argv(path)) == 2
        one_line_error(capsys, f"{token}.jsonl:2", token)


def test_duplicate_json_keys_are_refused(traj, tmp_path, capsys):
    first = traj.read_text().splitlines()[0]
    dup = first.replace('"prompt": ', '"prompt": "other prompt", "prompt": ', 1)
    path = tmp_path / "dup.jsonl"
    path.write_text(dup + "\n")
    assert main(inspect_argv(path)) == 2
    one_line_error(capsys, "dup.jsonl:1", "prompt", "duplicate")


def test_deep_nesting_is_a_message_not_a_recursion_error(traj, tmp_path, capsys):
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 200_000 + "]" * 200_000 + "\n")
    assert main(inspect_argv(path)) == 2
    one_line_error(capsys, "deep.jsonl:1", "nest")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id": "someone-else#0"}, "id"),
        ({"prompt_id": "someone-else"}, "id"),
        ({"sample": 1}, "id"),
    ],
)
def test_ids_contradicting_prompt_id_and_sample_are_refused(traj, tmp_path, capsys, change, field):
    first = rows(traj)[0]
    assert first["sample"] == 0
    path = write_rows(tmp_path / "ids.jsonl", [{**first, **change}])
    assert main(inspect_argv(path)) == 2
    one_line_error(capsys, "ids.jsonl:1", f"'{field}'")


# --------------------------------------------------------------------------- records vs the model


def test_a_prompt_longer_than_the_model_positions_is_refused(model_dir, traj, tmp_path, capsys):
    items = rows(traj)
    items[3]["prompt_token_ids"] = items[3]["prompt_token_ids"] * 40  # > 128 positions
    path = write_rows(tmp_path / "long.jsonl", items)
    assert main(train_argv(model_dir, path, tmp_path / "run")) == 2
    one_line_error(capsys, "long.jsonl:4", "prompt_token_ids", "128")
    assert not (tmp_path / "run").exists()


def test_the_mask_id_as_a_response_token_is_refused(model_dir, traj, tmp_path, capsys):
    from tabom.models import load_model

    mask = load_model(model_dir).mask_token_id
    items = rows(traj)
    items[2]["response_token_ids"][1] = mask
    path = write_rows(tmp_path / "mask.jsonl", items)
    assert main(train_argv(model_dir, path, tmp_path / "run")) == 2
    one_line_error(capsys, "mask.jsonl:3", "response_token_ids", "mask")


# --------------------------------------------------------------------------- one line, exit 2


BAD_FILES = {
    "not-json": "{oops\n",
    "not-an-object": "[1, 2]\n",
    "missing-field": '{"schema_version": 1}\n',
    "torn": '{"schema_version": 1',
    "bad-utf8": b"\xff\xfe\n",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_inspect_of_a_bad_file_is_one_line_exit_2(tmp_path, capsys, kind):
    path = tmp_path / f"{kind}.jsonl"
    content = BAD_FILES[kind]
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(inspect_argv(path)) == 2
    one_line_error(capsys, f"{kind}.jsonl")


def test_inspect_of_a_missing_path_or_a_folder_is_one_line_exit_2(tmp_path, capsys):
    assert main(inspect_argv(tmp_path / "nope.jsonl")) == 2
    one_line_error(capsys, "nope.jsonl")
    assert main(inspect_argv(tmp_path)) == 2
    one_line_error(capsys, str(tmp_path.name))


def test_inspect_of_a_missing_record_id_is_one_line_exit_2(traj, capsys):
    assert main(["inspect", str(traj), flag("id"), "nobody#0"]) == 2
    one_line_error(capsys, "nobody#0")


def test_distill_input_errors_are_one_line_exit_2(model_dir, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    missing = tmp_path / "missing.jsonl"
    argv = distill_argv(model_dir, out, flag("prompts_file"), str(missing))
    assert main(argv) == 2
    one_line_error(capsys, "missing.jsonl")
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "1+1="}\n{"text": 3}\n')
    argv = distill_argv(model_dir, out, flag("prompts_file"), str(bad), flag("task"), "none")
    assert main([*argv, flag("gen_length"), "4"]) == 2
    one_line_error(capsys, "prompts.jsonl:2", "prompt")
    assert main(distill_argv(str(tmp_path / "no-model"), out)) == 2
    one_line_error(capsys, "no-model")
    assert main(distill_argv(model_dir, out, flag("task"), "nosuchtask")) == 2
    one_line_error(capsys, "nosuchtask")


def test_distill_on_a_full_disk_is_one_line_exit_2(model_dir, tmp_path, capsys, monkeypatch):
    def full(self, item):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(f"{WRITER}.write", full)
    assert main(distill_argv(model_dir, tmp_path / "full.jsonl")) == 2
    one_line_error(capsys, "No space left on device")


def test_eval_input_errors_are_one_line_exit_2(model_dir, tmp_path, capsys):
    base = ["eval", flag("model"), model_dir, flag("n_examples"), "2"]
    assert main([*base, flag("tasks"), f"countdown@{tmp_path / 'missing.jsonl'}"]) == 2
    one_line_error(capsys, "missing.jsonl")
    assert main([*base, flag("tasks"), "nosuchtask"]) == 2
    one_line_error(capsys, "nosuchtask")
    assert main([*base, flag("adapter"), str(tmp_path / "no-adapter")]) == 2
    one_line_error(capsys, "no-adapter")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    assert (
        main([*base, flag("tasks"), "addition:max_digits=1", flag("trajectories"), str(bad)]) == 2
    )
    one_line_error(capsys, "bad.jsonl:1")


def test_distill_refuses_a_prompt_longer_than_the_model_positions(model_dir, tmp_path, capsys):
    prompts = tmp_path / "long.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "1+1="}) + "\n" + json.dumps({"prompt": "9" * 300}) + "\n"
    )
    argv = distill_argv(model_dir, tmp_path / "o.jsonl", flag("prompts_file"), str(prompts))
    assert main([*argv, flag("task"), "none", flag("gen_length"), "4"]) == 2
    one_line_error(capsys, "long.jsonl", "128 positions")
    assert not (tmp_path / "o.jsonl").exists()
