"""Every engine trains what one process trains (DESIGN §6, §7b; issue 16).

Each test launches ``tabom train`` on two CPU processes (gloo) with the shipped config of one
engine, exactly as docs/models.md documents it (``accelerate launch --config_file
configs/accelerate/<engine>.yaml --num_processes 2 --mixed_precision no -m tabom.cli train``),
and compares it with one process running the same global batch (2 micro-batches of one
process = 1 micro-batch on each of 2): the loss of every step and every final weight (LM head
and embeddings included) within 1e-5, and every trainable tensor changed.

Which path runs: the production one. accelerate alone never builds FSDP or DeepSpeed on a CPU
(it sets up a DDP-like MULTI_CPU state); ``tabom.engine.make_accelerator`` builds the engine
the launch config asks for on the CPU too (accelerate's own FSDP1 / FSDP2 / DeepSpeed code,
over gloo), and each test checks the engine line ``tabom train`` prints. Full fine-tuning runs
with gradient checkpointing and the chunked LM-head loss (``--loss.loss_chunk 2``) on, the
``tabom`` objective (CE + entropy ranking).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tabom.commands.distill import DistillConfig, distill

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
TASK = "addition:min_digits=4,max_digits=4,width=4"
TOL = 1e-5
ENGINES = {  # engine -> (shipped config, what `tabom train` must say it runs)
    "ddp": ("multi_gpu_ddp.yaml", "DDP (no sharding"),
    "fsdp2": ("fsdp.yaml", "FSDP2 (fully_shard"),
    "fsdp1": ("fsdp1.yaml", "FSDP1 (FULL_SHARD"),
    "zero2": ("zero2.yaml", "DeepSpeed ZeRO-2"),
    "zero3": ("zero3.yaml", "DeepSpeed ZeRO-3"),
}


def _has_deepspeed() -> bool:
    try:
        import deepspeed  # noqa: F401
    except Exception:  # not installed, or installed without a usable build
        return False
    return True


needs_deepspeed = pytest.mark.skipif(not _has_deepspeed(), reason="deepspeed is not installed")


@pytest.fixture(scope="module")
def traj(model_dir, tmp_path_factory) -> str:
    """16 trajectories of the random tiny model, one token per step (6 decode steps)."""
    path = tmp_path_factory.mktemp("traj") / "t.jsonl"
    cfg = DistillConfig(
        model=model_dir,
        task=TASK,
        n_prompts=8,
        n_samples=2,
        ks=[1],
        keep="all",
        output=str(path),
        progress=False,
        prompts_per_batch=8,
    )
    distill(cfg)
    return str(path)


def _args(model_dir: str, traj: str, lora: int) -> list[str]:
    args = ["--model", model_dir, "--data", traj, "--objective", "tabom"]
    args += ["--loss.td_window", "3", "--loss.rank_window", "3", "--loss.loss_chunk", "2"]
    args += ["--max_steps", "3", "--batch_size", "2", "--lr", "0.01", "--warmup_steps", "1"]
    args += ["--lora_rank", str(lora), "--lora_dropout", "0", "--gradient_checkpointing", "true"]
    return [*args, "--progress", "false", "--num_threads", "1", "--mixed_precision", "fp32"]


def _env() -> dict[str, str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    src = str(ROOT / "src")  # the code under test, in the child processes too
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _run(cmd: list[str], out: Path, *extra: str) -> subprocess.CompletedProcess:
    run = subprocess.run(
        [*cmd, "--output_dir", str(out), *extra],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-4000:])
    return run


def _launch(engine: str, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    cmd += ["--config_file", str(CONFIGS / ENGINES[engine][0])]
    cmd += ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(port)]
    return [*cmd, "-m", "tabom.cli", "train"]


@pytest.fixture(scope="module")
def one_process(model_dir, traj, tmp_path_factory):
    """The reference runs, one process x 2 micro-batches: ``lora rank -> output folder``."""
    done: dict[int, Path] = {}

    def get(lora: int) -> Path:
        if lora not in done:
            out = tmp_path_factory.mktemp(f"one-{lora}") / "run"
            cmd = [sys.executable, "-m", "tabom.cli", "train", *_args(model_dir, traj, lora)]
            run = _run(cmd, out, "--grad_accum", "2")
            assert "train: engine one process (no sharding)" in run.stdout
            done[lora] = out
        return done[lora]

    return get


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        err = (a[k].float() - b[k].float()).abs().max().item()
        assert err <= TOL, f"{k}: max difference {err}"


def check_engine(engine, lora, model_dir, traj, one_process, tmp_path, port) -> Path:
    """Two processes under ``engine`` against one: losses, weights, changes, engine line."""
    ref = one_process(lora)
    two = tmp_path / engine
    run = _run(_launch(engine, port), two, *_args(model_dir, traj, lora), "--grad_accum", "1")
    assert f"train: engine {ENGINES[engine][1]}" in run.stdout, run.stdout[-2000:]
    assert "2 processes on cpu" in run.stdout
    log_one, log_two = _log(ref), _log(two)
    assert [r["step"] for r in log_two] == [1, 2, 3]
    for key in ("total", "ce", "rank"):
        a, b = [r[key] for r in log_one], [r[key] for r in log_two]
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= TOL, (key, a, b)
    assert log_two[0]["rank"] > 0 and log_two[-1]["total"] < log_two[0]["total"]
    init = load_file(str(Path(model_dir) / "model.safetensors"))
    final_one = load_file(str(ref / "model" / "model.safetensors"))
    final_two = load_file(str(two / "model" / "model.safetensors"))
    _close(final_one, final_two)  # the whole model: embeddings and LM head included
    changed = {k for k in init if not torch.equal(init[k], final_two[k])}
    if lora:
        a = load_file(str(ref / "adapter" / "adapter_model.safetensors"))
        b = load_file(str(two / "adapter" / "adapter_model.safetensors"))
        _close(a, b)
        assert a and all("lora_" in k for k in a)
        # every adapter tensor moved (lora_B starts at zero), and exactly the targets merged
        assert all(b[k].abs().sum() > 0 for k in b if "lora_B" in k)
        assert changed and all(".q_proj." in k or ".v_proj." in k for k in changed)
    else:
        assert changed == set(init), sorted(set(init) - changed)  # every trainable tensor
    return two


@pytest.mark.slow
@pytest.mark.parametrize("lora", [0, 4])
def test_ddp_equals_one_process(model_dir, traj, one_process, tmp_path, free_port, lora):
    check_engine("ddp", lora, model_dir, traj, one_process, tmp_path, free_port)


@pytest.mark.slow
@pytest.mark.parametrize("lora", [0, 4])
def test_fsdp2_equals_one_process(model_dir, traj, one_process, tmp_path, free_port, lora):
    check_engine("fsdp2", lora, model_dir, traj, one_process, tmp_path, free_port)


@pytest.mark.slow
@pytest.mark.parametrize("lora", [0, 4])
def test_fsdp1_equals_one_process(model_dir, traj, one_process, tmp_path, free_port, lora):
    check_engine("fsdp1", lora, model_dir, traj, one_process, tmp_path, free_port)


@pytest.mark.slow
@needs_deepspeed
@pytest.mark.parametrize("engine", ["zero2", "zero3"])
def test_deepspeed_equals_one_process(model_dir, traj, one_process, tmp_path, free_port, engine):
    check_engine(engine, 0, model_dir, traj, one_process, tmp_path, free_port)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "zero3"])
def test_tad_under_an_engine_equals_one_process(model_dir, traj, tmp_path, free_port, engine):
    """``tad``: the prepared student's one forward (its head at the near and distant pairs
    inside it) and a frozen, unprepared teacher on every process give one process's losses
    (the KL included) and final weights."""
    if engine.startswith("zero") and not _has_deepspeed():
        pytest.skip("deepspeed is not installed")
    args = _args(model_dir, traj, 0)
    args[args.index("tabom")] = "tad"
    args += ["--loss.tad_delta", "2"]
    one = [sys.executable, "-m", "tabom.cli", "train", *args]
    ref = _run(one, tmp_path / "one", "--grad_accum", "2")
    assert "train: engine one process" in ref.stdout
    run = _run(_launch(engine, free_port), tmp_path / "two", *args, "--grad_accum", "1")
    assert f"train: engine {ENGINES[engine][1]}" in run.stdout, run.stdout[-2000:]
    log_one, log_two = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert [r["step"] for r in log_two] == [1, 2, 3]
    for key in ("total", "ce", "kl"):
        a, b = [r[key] for r in log_one], [r[key] for r in log_two]
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= TOL, (key, a, b)
    assert abs(log_two[0]["kl"]) < 1e-6 and log_two[-1]["kl"] > 0  # student = teacher at first
    final_one = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    final_two = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    _close(final_one, final_two)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fsdp2", "zero3"])
def test_resume_from_a_sharded_checkpoint(model_dir, traj, tmp_path, free_port, engine):
    """Stopped after step 2 of 3 (its step-3 checkpoint and model removed), the run resumes
    from the sharded step-2 checkpoint to the same weights; onto another process count it is
    refused, naming the setting."""
    if engine.startswith("zero") and not _has_deepspeed():
        pytest.skip("deepspeed is not installed")
    out = tmp_path / "run"
    cmd = [*_launch(engine, free_port), *_args(model_dir, traj, 0), "--grad_accum", "1"]
    _run(cmd, out, "--save_every", "2")
    final = load_file(str(out / "model" / "model.safetensors"))
    shutil.rmtree(out / "checkpoints" / "step-3")
    shutil.rmtree(out / "model")
    run = _run(cmd, out, "--save_every", "2", "--resume")
    assert "resuming" in run.stdout and "step-2" in run.stdout
    _close(final, load_file(str(out / "model" / "model.safetensors")))
    one = [sys.executable, "-m", "tabom.cli", "train", *_args(model_dir, traj, 0)]
    refused = subprocess.run(
        [*one, "--grad_accum", "1", "--output_dir", str(out), "--resume"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2 and "world: written with 2, now 1" in refused.stderr


@pytest.mark.slow
def test_a_sharded_config_that_cannot_run_is_refused(model_dir, traj, tmp_path, free_port):
    """A sharded engine asked for where accelerate cannot build it is refused, naming what
    was asked and what accelerate set up, and nothing is trained: the launcher's FSDP request
    without a process group (accelerate would run one plain process), and FSDP1 without
    ``use_orig_params`` (before: it trained nothing, silently)."""
    one = [sys.executable, "-m", "tabom.cli", "train", *_args(model_dir, traj, 0)]
    env = {**_env(), "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
    run = subprocess.run(
        [*one, "--output_dir", str(tmp_path / "a")], env=env, capture_output=True, text=True
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert "distributed_type FSDP was asked for, but accelerate set up NO" in run.stderr
    assert not (tmp_path / "a" / "model").exists()
    config = (CONFIGS / "fsdp1.yaml").read_text()
    bad = tmp_path / "fsdp1-flat.yaml"
    bad.write_text(config.replace("fsdp_use_orig_params: true", "fsdp_use_orig_params: false"))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(bad)]
    cmd += ["--num_processes", "2", "--mixed_precision", "no"]
    cmd += ["--main_process_port", str(free_port), "-m", "tabom.cli", "train"]
    run = subprocess.run(
        [*cmd, *_args(model_dir, traj, 0), "--output_dir", str(tmp_path / "b")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0
    assert "fsdp_config.fsdp_use_orig_params false is not supported" in run.stderr
    assert not (tmp_path / "b" / "model").exists()


# --------------------------------------------------------------------------- in one process


def _batch(dlm, seed: int = 0):
    from tabom.train_data import TrajectoryBatch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 90, (3, 12), generator=g)
    attn = torch.ones_like(ids)
    attn[0, :2] = 0
    ids[0, :2] = dlm.spec.pad_token_id
    resp = torch.zeros_like(ids, dtype=torch.bool)
    resp[:, 6:] = True
    steps = torch.full_like(ids, -1)
    steps[:, 6:] = torch.stack([torch.randperm(6, generator=g) for _ in range(3)])
    return TrajectoryBatch(ids, attn, resp, steps, decode_entropy=None, ids=[])


def _loss(model, batch, mask_id: int, chunk: int):
    from tabom.objectives import LossConfig, compute_objective

    loss = LossConfig(td_window=3, rank_window=3, loss_chunk=chunk, rank_margin=0.3)
    return compute_objective(
        model,
        batch,
        objective="tabom",
        loss=loss,
        mask_token_id=mask_id,
        generator=torch.Generator().manual_seed(1),
    )


def test_the_prepared_forward_computes_the_loss_with_the_head_inside(model_dir, one_thread):
    """Through :class:`HeadForward` (what ``accelerator.prepare`` gets) the loss and every
    gradient are those of the plain model; the head runs inside the module's forward, not
    after it (a forward hook sees the LM head called while the root forward runs)."""
    from tabom.models import load_model
    from tabom.models.prepared import HeadForward, PreparedLM

    dlm = load_model(model_dir)
    batch = _batch(dlm)
    want = _loss(dlm, batch, dlm.mask_token_id, 0)
    want_g = torch.autograd.grad(want.total, list(dlm.model.parameters()))
    wrapped = HeadForward(dlm.model, dlm.spec)
    depth = {"root": 0, "head_inside": 0}

    def enter(*_):
        depth["root"] += 1

    def leave(*_):
        depth["root"] -= 1

    def head_called(*_):
        depth["head_inside"] += depth["root"] > 0

    wrapped.register_forward_pre_hook(enter)
    wrapped.register_forward_hook(leave)
    dlm.model.get_output_embeddings().register_forward_hook(head_called)
    prepared = PreparedLM(model=wrapped, tokenizer=dlm.tokenizer, spec=dlm.spec)
    for chunk in (0, 2):
        got = _loss(prepared, batch, dlm.mask_token_id, chunk)
        torch.testing.assert_close(got.total, want.total, rtol=1e-6, atol=0)
        got_g = torch.autograd.grad(got.total, list(dlm.model.parameters()))
        for a, b in zip(got_g, want_g, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert depth["head_inside"] >= 1 and depth["root"] == 0  # chunk 2: the fused kernel
    # decoding through the prepared forward: the whole logits, aligned as the model's own
    ids, attn = batch.input_ids, batch.attention_mask
    torch.testing.assert_close(prepared(ids, attn), dlm(ids, attn), rtol=0, atol=0)
    assert prepared.vocab_size == dlm.vocab_size


def test_loss_chunk_works_when_the_head_is_not_a_plain_linear(model_dir, one_thread):
    """LoRA on the LM head (as an FSDP2 unit or a ZeRO-3 partition, a head whose weight the
    fused kernel cannot read): the chunked loss calls the head module chunk by chunk and
    equals the unchunked one (before: ``ValueError: loss_chunk ... not a plain Linear``)."""
    from tabom.models import load_model
    from tabom.models.lora import with_lora

    dlm = load_model(model_dir)
    dlm.model = with_lora(dlm.model, rank=4, alpha=8, dropout=0.0, targets=["lm_head"])
    for name, p in dlm.model.named_parameters():
        if "lora_B" in name:  # not zero, so the adapter changes the logits
            torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(2))
    assert dlm.linear_head() is None
    batch = _batch(dlm)
    params = [p for p in dlm.model.parameters() if p.requires_grad]
    outs = [_loss(dlm, batch, dlm.mask_token_id, chunk) for chunk in (0, 2)]
    assert outs[1].n_supervised > 2
    torch.testing.assert_close(outs[1].total, outs[0].total, rtol=1e-6, atol=0)
    grads = [torch.autograd.grad(o.total, params) for o in outs]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert all(g.abs().sum() > 0 for g in grads[1])
