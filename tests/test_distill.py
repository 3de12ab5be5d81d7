"""``tabom distill`` and ``tabom inspect``: same seed same file, resume after a kill, shards."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tabom.cli import load_config, main
from tabom.commands import distill as distill_mod
from tabom.commands.distill import DistillConfig, distill
from tabom.config import ConfigError
from tabom.decoding import DecodeConfig
from tabom.errors import TabomError
from tabom.jsonl import JsonlWriter
from tabom.models import load_model
from tabom.trajectory import read_trajectories

TASK = "addition:min_digits=1,max_digits=2"  # gen_length 4
DECODE_FIELDS = set(DecodeConfig.__dataclass_fields__)


@pytest.fixture(autouse=True)
def _restore_threads():
    """Runs use one thread (tiny batches; a second thread only contends); restore afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def half_verified(monkeypatch):
    """A random model never adds correctly: accept about half the answers, deterministically."""
    monkeypatch.setattr(distill_mod, "_verify", lambda task, ex, text: sum(map(ord, text)) % 2 == 0)


def config(model_dir: str, output, **over) -> DistillConfig:
    base = {
        "model": model_dir,
        "task": TASK,
        "n_prompts": 7,
        "n_samples": 2,
        "ks": [1, 2],
        "prompts_per_batch": 2,
        "keep": "all",
        "output": str(output),
        "progress": False,
        "num_threads": 1,
    }
    decode = {"temperature": 1.0} | {k: v for k, v in over.items() if k in DECODE_FIELDS}
    rest = {k: v for k, v in over.items() if k not in DECODE_FIELDS}
    return DistillConfig(**{**base, **rest}, decode=DecodeConfig(**decode))


def test_same_seed_same_file_and_every_sample_once(model_dir, tmp_path, capsys):
    a = distill(config(model_dir, tmp_path / "a.jsonl"))
    distill(config(model_dir, tmp_path / "b.jsonl"))
    distill(config(model_dir, tmp_path / "c.jsonl", seed=1))
    out = capsys.readouterr().out
    assert "7 prompts, 14 samples, 14 records" in out and "pass@2" in out
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "c.jsonl").read_bytes()
    dlm = load_model(model_dir)
    recs = read_trajectories(
        tmp_path / "a.jsonl", tokenizer=dlm.tokenizer, vocab_size=dlm.vocab_size
    )
    prompt_ids = list(dict.fromkeys(r.prompt_id for r in recs))
    assert len(prompt_ids) == 7
    assert [r.id for r in recs] == [f"{p}#{j}" for p in prompt_ids for j in range(2)]
    r = recs[0]
    assert r.method == "confidence" and r.data_source == TASK and r.verified is False
    assert len(r.response_token_ids) == 4 and sorted(r.decoding_order) == [0, 1, 2, 3]
    assert len(r.decode_entropy) == 4 and r.gen["seed"] == 0 and r.gen["steps"] == 4
    assert dlm.tokenizer.decode(r.prompt_token_ids) == r.prompt
    summary = json.loads((tmp_path / "a.jsonl.summary.json").read_text())["summary"]
    assert summary["samples"] == 14 and summary["records"] == 14 and summary["verified"] == 0
    assert summary["tokens_per_forward"] == 1.0 and summary["nfe_per_answer"] == 4.0
    assert a is not None and a.pass_at == {1: 0.0, 2: 0.0}
    assert (tmp_path / "a.jsonl.config.yaml").exists()
    # a finished file is not decoded again
    again = distill(config(model_dir, tmp_path / "a.jsonl"))
    assert again.decoded_now == 0 and again.records == 14
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_keep_verified_writes_only_verified_and_counts_everything(
    model_dir, tmp_path, half_verified
):
    s = distill(config(model_dir, tmp_path / "v.jsonl", keep="verified", n_samples=3, ks=[1, 3]))
    recs = read_trajectories(tmp_path / "v.jsonl")
    assert recs and all(r.verified for r in recs)
    assert s.samples == 21 and s.records == len(recs) == s.verified
    assert s.verified_share == pytest.approx(len(recs) / 21)
    assert 0 < s.pass_at[1] <= s.pass_at[3] <= 1


def _groups_before(progress, n_groups: int) -> None:
    lines = progress.read_text().splitlines(keepends=True)
    progress.write_text("".join(lines[:n_groups]))


@pytest.mark.parametrize("keep", ["all", "verified"])
def test_resume_after_a_truncated_line_equals_an_uninterrupted_run(
    model_dir, tmp_path, half_verified, keep
):
    distill(config(model_dir, tmp_path / "full.jsonl", keep=keep))
    full = (tmp_path / "full.jsonl").read_bytes()
    lines = full.splitlines(keepends=True)
    k = len(lines) // 2  # kill in the middle of writing line k + 1 (0-based k)
    killed = tmp_path / "killed.jsonl"
    killed.write_bytes(b"".join(lines[:k]) + lines[k][: len(lines[k]) // 2])
    shutil.copy(tmp_path / "full.jsonl.progress", tmp_path / "killed.jsonl.progress")
    group_of_k = read_trajectories(tmp_path / "full.jsonl")[k].prompt_id
    progress = [json.loads(x) for x in (tmp_path / "full.jsonl.progress").read_text().splitlines()]
    _groups_before(
        tmp_path / "killed.jsonl.progress",
        next(i for i, g in enumerate(progress) if group_of_k in g["prompt_ids"]),
    )
    with pytest.warns(RuntimeWarning, match=r"killed.jsonl:\d+: dropped a truncated last line"):
        s = distill(config(model_dir, killed, keep=keep))
    assert killed.read_bytes() == full
    assert s.samples == 14 and s.decoded_now < 14
    # without any progress sidecar everything is decoded again, and still nothing twice
    (tmp_path / "killed.jsonl.progress").unlink()
    killed.write_bytes(b"".join(lines[:k]))
    distill(config(model_dir, killed, keep=keep))
    assert killed.read_bytes() == full


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a re-decoded record must not differ
@pytest.mark.parametrize(("keep", "k"), [("all", 1), ("all", 5), ("verified", 2)])
def test_resume_after_stopping_after_k_records_equals_an_uninterrupted_run(
    model_dir, tmp_path, monkeypatch, half_verified, keep, k
):
    distill(config(model_dir, tmp_path / "full.jsonl", keep=keep))
    real_write = JsonlWriter.write
    written = []

    def write_then_die(self, item):
        if not isinstance(item, dict):  # a record, not a progress line
            if len(written) == k:
                raise KeyboardInterrupt
            written.append(item)
        real_write(self, item)

    monkeypatch.setattr(JsonlWriter, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        distill(config(model_dir, tmp_path / "stopped.jsonl", keep=keep))
    assert len((tmp_path / "stopped.jsonl").read_text().splitlines()) == k
    monkeypatch.setattr(JsonlWriter, "write", real_write)
    distill(config(model_dir, tmp_path / "stopped.jsonl", keep=keep))
    assert (tmp_path / "stopped.jsonl").read_bytes() == (tmp_path / "full.jsonl").read_bytes()


@pytest.mark.parametrize(
    ("over", "tokens_per_forward"),
    [({"tokens_per_step": 2, "score": "entropy"}, 2.0), ({"threshold": 0.001}, 4.0)],
)
def test_budgets_are_recorded_and_respected(model_dir, tmp_path, over, tokens_per_forward):
    s = distill(config(model_dir, tmp_path / "t.jsonl", **over))
    recs = read_trajectories(tmp_path / "t.jsonl")
    assert s.tokens_per_forward == tokens_per_forward
    threshold = over.get("threshold")
    assert recs[0].gen["threshold"] == threshold and recs[0].method == over.get(
        "score", "confidence"
    )
    assert recs[0].gen["steps"] == (None if threshold else 2)
    assert max(max(r.decoding_order) for r in recs) == (0 if threshold else 1)


def test_leftover_shards_are_merged_in_prompt_order(model_dir, tmp_path):
    """What a killed 2-process run leaves: shard files and their sidecars, no main file."""
    distill(config(model_dir, tmp_path / "full.jsonl"))
    full = tmp_path / "full.jsonl"
    recs = full.read_text().splitlines(keepends=True)
    progress = full.with_name("full.jsonl.progress").read_text().splitlines(keepends=True)
    out = tmp_path / "sharded.jsonl"
    for rank in (0, 1):
        groups = [json.loads(p) for p in progress[rank::2]]
        ids = {pid for g in groups for pid in g["prompt_ids"]}
        shard = tmp_path / f"sharded.jsonl.shard-{rank}"
        shard.write_text("".join(r for r in recs if json.loads(r)["prompt_id"] in ids))
        shard.with_name(shard.name + ".progress").write_text("".join(progress[rank::2]))
    s = distill(config(model_dir, out))
    assert s.decoded_now == 0 and out.read_bytes() == full.read_bytes()
    assert not list(tmp_path.glob("sharded.jsonl.shard-*"))


def test_a_file_of_other_settings_is_refused(model_dir, tmp_path):
    distill(config(model_dir, tmp_path / "t.jsonl"))
    with pytest.raises(
        TabomError, match=r"t.jsonl was written .*decode.temperature: written with 1.0, now 0.5"
    ):
        distill(config(model_dir, tmp_path / "t.jsonl", temperature=0.5))


def test_prompts_from_a_jsonl_file_with_a_prompt_field(model_dir, tmp_path):
    rows = [{"key": f"q{i}", "question": f"{i}+1=", "a": i, "b": 1} for i in range(3)]
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    over = {"prompts_file": str(src), "prompt_field": "question", "id_field": "key"}
    s = distill(config(model_dir, tmp_path / "f.jsonl", n_prompts=None, **over))
    recs = read_trajectories(tmp_path / "f.jsonl")
    assert s.prompts == 3 and [r.id for r in recs[:2]] == ["q0#0", "q0#1"]
    assert recs[0].prompt == "0+1=" and recs[0].data_source == f"{TASK}@prompts.jsonl"
    assert all(r.verified is not None for r in recs)  # the addition verifier read a and b


def test_a_non_jsonl_file_without_datasets_says_what_to_install(model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    cfg = config(model_dir, tmp_path / "f.jsonl", prompts_file=str(tmp_path / "p.parquet"))
    # a TabomError (one line, exit 2 in the CLI), no longer an ImportError (issue 21)
    with pytest.raises(TabomError, match=r"pip install datasets.*\.jsonl file works without"):
        distill(cfg)


def test_config_rejects_bad_combinations():
    with pytest.raises(ConfigError, match="keep: 'verified' needs a task"):
        load_config(DistillConfig, argv=["--task", "none", "--prompts_file", "p.jsonl"])
    with pytest.raises(ConfigError, match="ks"):
        load_config(DistillConfig, argv=["--n_samples", "2", "--ks", "1,4"])
    with pytest.raises(ConfigError, match="temperature 0"):
        load_config(DistillConfig, argv=["--decode.temperature", "0"])
    cfg = load_config(
        DistillConfig, argv=["--decode.tokens_per_step", "2", "--decode.block_length", "3"]
    )
    assert cfg.decode_config().steps == 4  # T = 6 in 2 blocks of 3: ceil(3 / 2) = 2 per block
    # ceil(6 / 4) = 2 steps, rounded up to the 3 blocks of 2 (steps_for, as tabom eval)
    cfg = load_config(
        DistillConfig, argv=["--decode.tokens_per_step", "4", "--decode.block_length", "2"]
    )
    assert cfg.decode_config().steps == 3
    with pytest.raises(ConfigError, match=r"block_length \(16\) must divide the response"):
        load_config(DistillConfig, argv=["--decode.block_length", "16"])  # longer than T = 6
    with pytest.raises(ConfigError, match="block_length"):
        load_config(DistillConfig, argv=["--decode.block_length", "4"])


def test_cli_distill_then_inspect_draws_a_png(model_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "t.jsonl"
    argv = [
        "distill",
        "--model",
        model_dir,
        "--task",
        TASK,
        "--n_prompts",
        "3",
        "--num_threads",
        "1",
    ]
    assert main([*argv, "--keep", "all", "--output", str(out), "--progress", "false"]) == 0
    assert "3 prompts, 12 samples, 12 records" in capsys.readouterr().out
    png = tmp_path / "pic.png"
    # the tokenizer where the user points (issue 21: not the folder the file names)
    argv = ["inspect", str(out), "--index", "5", "--png", str(png), "--tokenizer", model_dir]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "12 records, 3 prompts, 4-4 samples per prompt" in text
    assert "steps per answer mean 4.00" in text and "tokens per step mean 1.00" in text
    assert f"-> {png} (tokens from" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["inspect", str(out), "--draw", "false"]) == 0
    assert "drew" not in capsys.readouterr().out


@pytest.mark.slow
def test_two_process_run_equals_the_one_process_run(model_dir, tmp_path, free_port):
    args = ["--model", model_dir, "--task", TASK, "--n_prompts", "7", "--n_samples", "2"]
    args += ["--ks", "1,2", "--prompts_per_batch", "2", "--keep", "all", "--progress", "false"]
    args += ["--num_threads", "1"]
    assert main(["distill", *args, "--output", str(tmp_path / "one.jsonl")]) == 0
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--main_process_port", str(free_port)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [*launch, "-m", "tabom.cli", "distill", *args, "--output", str(tmp_path / "two.jsonl")]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "on 2 process(es)" in run.stdout
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert not list(tmp_path.glob("two.jsonl.shard-*"))


def test_a_file_written_before_the_whole_decode_config_was_recorded_resumes(tmp_path):
    """tests/data/trajectories-v1/fixed.jsonl: main at d1607c1 wrote it with these settings
    (its ``gen`` lacks score, tokens_per_step and cache); a longer run continues it."""
    old = Path(__file__).parent / "data" / "trajectories-v1"
    for f in old.glob("fixed.jsonl*"):
        shutil.copy(f, tmp_path / f.name)
    before = (tmp_path / "fixed.jsonl").read_bytes()
    cfg = DistillConfig(model="tiny-base", n_prompts=3, n_samples=2, ks=[1], keep="all", prompts_per_batch=1,
                        output=str(tmp_path / "fixed.jsonl"), progress=False,
                        decode=DecodeConfig(tokens_per_step=2, top_k=5, temperature=1.0))  # fmt: skip
    s = distill(cfg)
    assert s.decoded_now == 2  # the third prompt's two samples only
    after = (tmp_path / "fixed.jsonl").read_bytes()
    assert after.startswith(before)
    recs = read_trajectories(tmp_path / "fixed.jsonl")
    assert len(recs) == 6 and "score" not in recs[0].gen and recs[-1].gen["score"] == "confidence"
    assert len({json.dumps(r.decode_config().record()) for r in recs}) == 1
    with pytest.raises(TabomError, match="decode.top_k"):  # other settings: refused
        distill(dataclasses.replace(cfg, decode=DecodeConfig(tokens_per_step=2, temperature=1.0)))
