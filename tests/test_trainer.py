"""``tabom train`` (DESIGN §5-6): each objective learns, LoRA leaves the base alone, exact resume,
bad input refused before any step, recipes validate."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tabom.cli import load_config, main, run_command
from tabom.commands import train as trainer_mod
from tabom.commands.distill import DistillConfig, distill
from tabom.commands.train import TrainConfig, latest_checkpoint, load_train_items, train
from tabom.config import ConfigError
from tabom.errors import DataFileError
from tabom.losses import RANK_LOSSES
from tabom.models import TinyModelConfig, build_tiny, load_model
from tabom.objectives import GROUND_TRUTH_OBJECTIVES, LossConfig, compute_objective
from tabom.train_data import (
    TrainDataError,
    batch_indices,
    collate_trajectories,
    ground_truth_items,
    load_trajectories,
    steps_per_epoch,
)

SMALL = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64)
TASK = "addition:min_digits=4,max_digits=4,width=4"  # responses of 6 tokens: 6 decode steps
RECIPES = ["llada_math", "llada_code", "dream_math", "dream_code", "tiny_tabom"]
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
LOSS_FIELDS = set(LossConfig.__dataclass_fields__)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def traj(model_dir, tmp_path_factory) -> str:
    """16 trajectories of the random tiny model, decoded one token per step (s_max = 5)."""
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


def config(model_dir: str, data: str | None, out: Path, **over) -> TrainConfig:
    base = {
        "model": model_dir,
        "data": data,
        "output_dir": str(out),
        "objective": "tabom",
        "max_steps": 6,
        "batch_size": 4,
        "grad_accum": 2,
        "lr": 1e-2,
        "warmup_steps": 1,
        "lora_rank": 0,
        "progress": False,
    }
    loss = {"td_window": 3, "rank_window": 3}
    loss |= {k: v for k, v in over.items() if k in LOSS_FIELDS}
    rest = {k: v for k, v in over.items() if k not in LOSS_FIELDS}
    return TrainConfig(**{**base, **rest}, loss=LossConfig(**loss))


def fixed_batch_loss(dlm, cfg: TrainConfig) -> float:
    """The objective on the first 8 items with fixed masking draws, no gradient."""
    items, _ = load_train_items(cfg, dlm)
    b = collate_trajectories([items[i] for i in range(8)], dlm.spec.pad_token_id)
    with torch.no_grad():
        out = compute_objective(
            dlm,
            b,
            objective=cfg.objective,
            loss=cfg.loss,
            mask_token_id=dlm.mask_token_id,
            generator=torch.Generator().manual_seed(7),
        )
    return out.total.item()


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_data_order_covers_every_item_each_epoch_and_splits_processes():
    n, B, A, P = 10, 2, 2, 2  # G = 8 items a step: 2 steps an epoch, the second padded
    assert steps_per_epoch(n, B * A * P) == 2
    for epoch in range(2):
        seen = []
        for step in (2 * epoch, 2 * epoch + 1):
            for micro in range(A):
                for proc in range(P):
                    e, idx = batch_indices(
                        n,
                        step=step,
                        micro=micro,
                        process=proc,
                        seed=3,
                        batch_size=B,
                        grad_accum=A,
                        num_processes=P,
                    )
                    assert e == epoch and len(idx) == B
                    seen += idx
        assert sorted(set(seen)) == list(range(n)) and len(seen) == 16
    kw = {"micro": 0, "process": 0, "seed": 3, "batch_size": B, "grad_accum": A, "num_processes": P}
    assert batch_indices(n, step=0, **kw) != batch_indices(n, step=2, **kw)  # reshuffled


def test_ground_truth_items_pad_answers_with_eos(tmp_path):
    tok = build_tiny(SMALL).tokenizer
    path = tmp_path / "gt.jsonl"
    path.write_text('{"prompt": "1+2=", "answer": "3"}\n{"prompt": "9+9=", "answer": "18"}\n')
    items = ground_truth_items(tokenizer=tok, eos_token_id=1, path=path)
    eos = [[t == 1 for t in it.response_ids.tolist()] for it in items]
    assert eos == [[False, True, True], [False, False, True]]  # longest answer + 1 EOS
    assert all((it.decoding_order == -1).all() for it in items)
    gen = ground_truth_items(tokenizer=tok, eos_token_id=1, gt_task=TASK, n_examples=3, seed=0)
    assert len(gen) == 3 and all(len(it.response_ids) == 6 for it in gen)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(TrainDataError, match="empty.jsonl: data: .*empty file"):
        ground_truth_items(tokenizer=tok, eos_token_id=1, path=tmp_path / "empty.jsonl")


def test_ground_truth_items_end_with_the_stop_token_when_the_backend_has_one(tmp_path):
    tok = build_tiny(SMALL).tokenizer
    path = tmp_path / "gt.jsonl"
    path.write_text('{"prompt": "1+2=", "answer": "3"}\n{"prompt": "9+9=", "answer": "18"}\n')
    items = ground_truth_items(tokenizer=tok, eos_token_id=1, stop_token_id=3, path=path)
    ids = [tok(a, add_special_tokens=False)["input_ids"] for a in ("3", "18")]
    assert [it.response_ids.tolist() for it in items] == [
        ids[0] + [3, 1, 1],  # answer, stop, EOS tail to the longest answer + stop + one EOS
        ids[1] + [3, 1],
    ]
    # a 5-digit sum fills 5 of the task's 6 positions: no room for the stop token and EOS
    with pytest.raises(TrainDataError, match="leaves no room for the stop token and EOS"):
        ground_truth_items(
            tokenizer=tok, eos_token_id=1, stop_token_id=3, gt_task=TASK, n_examples=3, seed=0
        )


RUNS = [("sft", {}), ("traj-sft", {}), ("td", {}), ("puma", {}), ("papl", {})]
RUNS += [("tabom", {"rank_loss": v}) for v in sorted(RANK_LOSSES)]
RUNS += [("tabom", {"rank_loss": "hinge-sg", "rank_margin": "auto"})]


@pytest.mark.parametrize(("objective", "loss_over"), RUNS)
def test_a_few_steps_lower_the_loss_and_change_every_parameter(
    model_dir, traj, tmp_path, objective, loss_over
):
    gt = objective in GROUND_TRUTH_OBJECTIVES
    over = {"gt_task": TASK, "gt_examples": 16} if gt else {}
    cfg = config(
        model_dir,
        None if gt else traj,
        tmp_path / "run",
        objective=objective,
        **over,
        **loss_over,
    )
    before = fixed_batch_loss(load_model(model_dir), cfg)
    out = train(cfg)
    after = fixed_batch_loss(load_model(str(out / "model")), cfg)
    assert after < before - 0.05, (before, after)
    init, final = weights(Path(model_dir)), weights(out / "model")
    assert init.keys() == final.keys()
    unchanged = [k for k in init if torch.equal(init[k], final[k])]
    assert not unchanged
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    r = log[0]
    assert r["lr"] == pytest.approx(1e-2) and r["n_supervised"] > 0 and r["grad_norm"] > 0
    assert (r["rank"] > 0) == (objective == "tabom")
    assert (r["pairs_per_sample"] > 0) == (objective == "tabom")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-6"]


def test_lora_trains_only_the_adapter_and_leaves_the_base_bit_identical(
    model_dir, traj, tmp_path, monkeypatch
):
    seen = {}
    original = trainer_mod._with_lora

    def capture(model, cfg, targets):
        peft_model = original(model, cfg, targets)
        seen["model"] = peft_model
        seen["init"] = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
        return peft_model

    monkeypatch.setattr(trainer_mod, "_with_lora", capture)
    cfg = config(model_dir, traj, tmp_path / "run", lora_rank=4, lora_alpha=8, merge_lora=False)
    out = train(cfg)
    params = dict(seen["model"].named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-3] for n in trainable} == {"lora_A", "lora_B"}
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}
    for n, p in params.items():
        assert torch.equal(p, seen["init"][n]) != p.requires_grad, n
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / "model").exists()
    # checkpoints hold the adapter, not the frozen base
    ckpt = weights(latest_checkpoint(out))
    assert len(ckpt) == len(trainable) and all("lora_" in k for k in ckpt)


@pytest.mark.parametrize("lora", [0, 4])
def test_kill_and_resume_equals_an_uninterrupted_run(model_dir, traj, tmp_path, monkeypatch, lora):
    # 6 optimizer steps of 2 micro-batches, 16 items and a global batch of 8: 3 epochs
    over = {"save_every": 2, "lora_rank": lora, "lora_dropout": 0.2 if lora else 0.0}
    full = train(config(model_dir, traj, tmp_path / "full", **over))

    calls = {"n": 0}
    real = trainer_mod.compute_objective

    def dies_at_call_8(*args, **kwargs):  # step 4, second micro-batch: after step-2 was saved
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "compute_objective", dies_at_call_8)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(config(model_dir, traj, killed, **over))
    assert latest_checkpoint(killed).name == "step-2"
    assert len((killed / "log.jsonl").read_text().splitlines()) == 3
    monkeypatch.setattr(trainer_mod, "compute_objective", real)
    with pytest.raises(ConfigError, match="pass --resume"):
        train(config(model_dir, traj, killed, **over))
    train(config(model_dir, traj, killed, resume=True, **over))

    a, b = weights(full / "model"), weights(killed / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def log(path):
        return [
            {k: v for k, v in json.loads(x).items() if k != "elapsed_s"}
            for x in (path / "log.jsonl").read_text().splitlines()
        ]

    assert log(full) == log(killed)
    if lora:
        assert (killed / "adapter" / "adapter_model.safetensors").is_file()
        load_model(str(killed / "model"))  # the merged model loads like any other


@pytest.mark.parametrize("sharded", [False, True], ids=["one-process", "sharded"])
@pytest.mark.parametrize("lora", [0, 4])
def test_the_final_save_is_the_trained_model_bit_for_bit(
    model_dir, traj, tmp_path, monkeypatch, lora, sharded
):
    # sharded: as under FSDP / ZeRO-3, the final save rebuilds a whole copy of the model from
    # the gathered state dict instead of using the prepared model's modules (which hold shards)
    rebuilt = []
    real_rebuild = trainer_mod._rebuild

    def rebuild(cfg, state):
        rebuilt.append(len(state))
        return real_rebuild(cfg, state)

    monkeypatch.setattr(trainer_mod, "_is_sharded", lambda accelerator: sharded)
    monkeypatch.setattr(trainer_mod, "_rebuild", rebuild)
    cfg = config(model_dir, traj, tmp_path / "run", lora_rank=lora, max_steps=2, grad_accum=1)
    out = train(cfg)
    assert bool(rebuilt) == sharded
    # the in-memory weights at the last step (the checkpoint holds the prepared module's state:
    # the network under "model.", tabom.models.prepared.HeadForward)
    trained = {k.removeprefix("model."): v for k, v in weights(latest_checkpoint(out)).items()}
    if lora:
        adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
        assert adapter.keys() == {k.replace(".default", "") for k in trained}
        assert all(torch.equal(adapter[k.replace(".default", "")], v) for k, v in trained.items())
        ref = trainer_mod._with_lora(load_model(model_dir).model, cfg, ("q_proj", "v_proj"))
        assert not ref.load_state_dict(trained, strict=False).unexpected_keys
        trained = ref.merge_and_unload().state_dict()  # the in-memory merge of those weights
    final = weights(out / "model")
    assert final.keys() == weights(Path(model_dir)).keys()
    assert all(torch.equal(final[k], trained[k]) for k in final)


def test_backend_and_dtype_reach_load_model(model_dir, traj, tmp_path, monkeypatch):
    calls, seen = [], {}
    real_load, real_lora = trainer_mod.load_model, trainer_mod._with_lora

    def load(name, **kwargs):
        calls.append(kwargs)
        return real_load(name, **kwargs)

    def capture(model, cfg, targets):
        seen["model"] = real_lora(model, cfg, targets)
        seen["init"] = {n: p.detach().clone() for n, p in seen["model"].named_parameters()}
        return seen["model"]

    monkeypatch.setattr(trainer_mod, "load_model", load)
    monkeypatch.setattr(trainer_mod, "_with_lora", capture)
    short = {"max_steps": 2, "grad_accum": 1}
    train(config(model_dir, traj, tmp_path / "full", **short))  # full fine-tuning: fp32
    assert calls == [{"backend": "auto", "dtype": torch.float32}]
    # LoRA on a frozen bf16 base (CPU: no autocast): the adapters stay fp32 and learn
    lora = {"lora_rank": 4, "backend": "tiny", "dtype": "bfloat16", "merge_lora": False}
    out = train(config(model_dir, traj, tmp_path / "lora", **lora, **short))
    assert calls[1] == {"backend": "tiny", "dtype": "bfloat16"}
    params = dict(seen["model"].named_parameters())
    for n, p in params.items():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), n
        assert torch.equal(p, seen["init"][n]) != p.requires_grad, n
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["total"]) and r["grad_norm"] > 0 for r in log)
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert adapter and all(v.dtype == torch.float32 for v in adapter.values())


def test_a_micro_batch_with_nothing_supervised_still_runs_backward(
    model_dir, traj, tmp_path, monkeypatch
):
    mixed = _mixed_file(traj, tmp_path / "mixed.jsonl")
    outs, backward = [], {"n": 0}
    real = trainer_mod.compute_objective

    def record(*args, **kwargs):
        outs.append(real(*args, **kwargs))
        return outs[-1]

    from accelerate import Accelerator

    real_backward = Accelerator.backward

    def counting_backward(self, loss, **kwargs):
        backward["n"] += 1
        return real_backward(self, loss, **kwargs)

    monkeypatch.setattr(trainer_mod, "compute_objective", record)
    monkeypatch.setattr(Accelerator, "backward", counting_backward)
    with pytest.warns(RuntimeWarning, match="8 of 16 trajectories are too short"):
        out = train(config(model_dir, mixed, tmp_path / "run", batch_size=1, max_steps=8))
    empty = [o for o in outs if o.n_supervised == 0]
    assert empty and all(o.total.requires_grad and o.total.item() == 0 for o in empty)
    assert backward["n"] == len(outs) == 16
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert sum(r["n_uncut"] for r in log) == len(empty)


def test_eval_hook_logs_accuracy(model_dir, traj, tmp_path):
    cfg = config(
        model_dir,
        traj,
        tmp_path / "run",
        max_steps=2,
        grad_accum=1,
        eval_every=2,
        eval_tasks=["addition:max_digits=1"],
        eval_examples=4,
    )
    log = [json.loads(x) for x in (train(cfg) / "log.jsonl").read_text().splitlines()]
    assert "eval" not in log[0] and 0 <= log[1]["eval"]["addition:max_digits=1"] <= 1


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def no_step(monkeypatch):
    """Fail the test if any training step starts."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a training step ran")

    monkeypatch.setattr(trainer_mod, "compute_objective", forbidden)


def test_unknown_field_exits_2_naming_it(capsys):
    assert main(["train", "--rank_windw", "3"]) == 2
    assert "--rank_windw: unknown flag; did you mean --loss.rank_window?" in capsys.readouterr().err


def test_unknown_field_in_a_yaml_file_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "tiny_tabom.yaml").read_text() + "rank_marginn: 0.1\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "unknown field 'rank_marginn'" in err


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"td_window": 6}, "loss.td_window: M = 6"),
        ({"rank_window": 7}, "loss.rank_window: W = 7"),
    ],
)
def test_a_window_larger_than_the_trajectories_is_refused(
    model_dir, traj, tmp_path, no_step, over, field
):
    with pytest.raises(TrainDataError, match=f"t.jsonl: {field} steps"):
        train(config(model_dir, traj, tmp_path / "run", **over))
    assert not (tmp_path / "run").exists()


def test_the_largest_windows_that_fit_are_accepted(model_dir, traj, tmp_path):
    dlm = load_model(model_dir)
    items, short = load_train_items(
        config(model_dir, traj, tmp_path, td_window=5, rank_window=6), dlm
    )
    assert len(items) == 16 and short == 0
    # td does not rank: W is not checked there
    load_train_items(config(model_dir, traj, tmp_path, objective="td", rank_window=99), dlm)


def test_a_trajectory_file_of_another_tokenizer_is_refused(
    model_dir, traj, tmp_path, no_step, capsys
):
    rows = [json.loads(x) for x in Path(traj).read_text().splitlines()]
    for r in rows:
        r["gen"]["tokenizer"]["sha256"] = "0" * 64
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataFileError, match=r"other.jsonl:1: field 'gen.tokenizer'"):
        train(config(model_dir, str(other), tmp_path / "run"))
    assert main(["train", "--model", model_dir, "--data", str(other), "--loss.td_window", "3"]) == 2
    assert "tokenizer differs from the model's" in capsys.readouterr().err


def test_an_empty_or_missing_file_is_refused(model_dir, tmp_path, no_step, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TrainDataError, match="empty.jsonl: data: .*no records"):
        train(config(model_dir, str(empty), tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        train(config(model_dir, str(tmp_path / "nope.jsonl"), tmp_path / "run"))
    with pytest.raises(TrainDataError, match="empty.jsonl: data: .*empty file"):
        train(config(model_dir, str(empty), tmp_path / "run", objective="sft"))
    assert not (tmp_path / "run").exists()
    assert main(["train", "--model", model_dir, "--data", str(empty)]) == 2
    assert "empty.jsonl: data: the trajectory file holds no records" in capsys.readouterr().err


def test_verified_only_with_nothing_verified_is_refused(model_dir, traj, tmp_path, no_step):
    dlm = load_model(model_dir)
    assert not any(
        r.verified for r in load_trajectories(traj, tokenizer=dlm.tokenizer, vocab_size=100)
    )
    with pytest.raises(TrainDataError, match="verified_only: none"):
        train(config(model_dir, traj, tmp_path / "run", verified_only=True))


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"objective": "sft", "data": None}, "exactly one of gt_task"),
        ({"objective": "sft", "gt_task": "addition"}, "exactly one of gt_task"),
        ({"objective": "td", "gt_task": "addition"}, "gt_task: only objectives sft, puma, papl"),
        ({"objective": "td", "data": None}, "data: objective 'td' needs"),
        ({"objective": "tabom", "loss.nelbo_weight": True}, "loss.nelbo_weight"),
        ({"loss.td_window": 0}, r"--loss.td_window: 0 is out of range; it must be >= 1$"),
        ({"epochs": 0, "max_steps": 0}, "epochs / max_steps"),
        ({"eval_every": 5}, "eval_every: set eval_tasks"),
        ({"backend": "llama"}, "backend must be auto or one of"),
        ({"lora_rank": 0, "dtype": "bfloat16"}, "dtype: full fine-tuning .* fp32 master"),
        ({"lr": 0}, r"--lr: 0.0 is out of range; it must be in \(0, 1e\+30\]$"),
        ({"grad_clip": -1}, r"--grad_clip: -1.0 is out of range; it must be >= 0$"),
        ({"weight_decay": -0.1}, r"--weight_decay: -0.1 is out of range; it must be >= 0$"),
        ({"loss.rank_margin": -1}, r"--loss.rank_margin: -1.0 is out of range; it must be >= 0$"),
        ({"loss.rank_weight": -1}, r"--loss.rank_weight: -1.0 is out of range; it must be >= 0$"),
        ({"loss.rank_loss": "nope"}, r"\bloss.rank_loss must be one of hinge"),
        ({"lora_rank": -1}, r"--lora_rank: -1 is out of range; it must be >= 0$"),
        ({"lora_dropout": 1}, r"--lora_dropout: 1.0 is out of range; it must be in \[0, 1\)$"),
    ],
)
def test_bad_combinations_name_the_field(over, message):
    argv = [f"--{k}={v}" for k, v in {"data": "t.jsonl", **over}.items()]
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, argv)


def test_mixed_precision_choices():
    assert (
        load_config(TrainConfig, None, ["--data", "t", "--mixed_precision", "fp32"]).mixed_precision
        == "fp32"
    )
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_config(TrainConfig, None, ["--data", "t", "--mixed_precision", "no"])


def test_report_to_a_missing_tracker_is_a_one_line_error(
    model_dir, traj, tmp_path, no_step, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    cfg = config(model_dir, traj, tmp_path / "run", report_to="wandb")
    with pytest.raises(ConfigError, match=r"report_to: 'wandb' needs .*\(pip install wandb\)"):
        train(cfg)
    assert run_command("train", trainer_mod.run_train, cfg) == 2
    errors = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    assert len(errors) == 1 and errors[0].startswith("tabom train: error: report_to: 'wandb'")


def test_lora_without_peft_is_a_one_line_error(model_dir, traj, tmp_path, no_step, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    cfg = config(model_dir, traj, tmp_path / "run", lora_rank=4)
    with pytest.raises(ConfigError, match=r"lora_rank: 4 .*\(pip install peft\)"):
        train(cfg)
    assert run_command("train", trainer_mod.run_train, cfg) == 2


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_is_a_valid_train_config(name):
    cfg = load_config(TrainConfig, CONFIGS / f"{name}.yaml")
    assert cfg.batch_size * cfg.grad_accum == 32 or name == "tiny_tabom"
    assert cfg.objective == "tabom" and cfg.loss.rank_ties == "strict"
    if name != "tiny_tabom":
        assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets) == (16, 16, ["q_proj", "v_proj"])
        assert (cfg.loss.td_window, cfg.loss.rank_window, cfg.epochs, cfg.warmup_steps) == (
            32,
            32,
            5,
            50,
        )
        assert (cfg.weight_decay, cfg.grad_clip) == (0.01, 1.0)
    expected = {
        "llada_math": (1.0, 0.2, 2e-5),
        "llada_code": (1.0, 0.3, 2e-5),
        "dream_math": (1.0, 0.1, 2e-5),
        "dream_code": (2.0, 0.1, 1e-4),
    }
    if name in expected:
        assert (cfg.loss.rank_weight, cfg.loss.rank_margin, cfg.lr) == expected[name]
        # the backend named, the frozen LoRA base in bf16; full fine-tuning must ask for fp32
        assert (cfg.backend, cfg.dtype) == (name.split("_")[0], "bfloat16")
        path = CONFIGS / f"{name}.yaml"
        with pytest.raises(ConfigError, match="dtype: full fine-tuning"):
            load_config(TrainConfig, path, ["--lora_rank", "0"])
        assert load_config(TrainConfig, path, ["--lora_rank", "0", "--dtype", "float32"]).dtype
    else:
        assert (cfg.backend, cfg.dtype) == ("auto", "auto")


# --------------------------------------------------------------------------- two processes


def _mixed_file(traj: str, path: Path) -> str:
    """Every second record decoded only 2 tokens: too short for M = 3, nothing supervised."""
    rows = [json.loads(x) for x in Path(traj).read_text().splitlines()]
    for i, r in enumerate(rows):
        if i % 2:
            r["decoding_order"] = [0, 1, -1, -1, -1, -1]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*too short for td_window")
def test_two_processes_equal_one_process_with_accumulation_and_resume(
    model_dir, traj, tmp_path, free_port
):
    # 2 processes x 1 micro-batch read the same items and masks as 1 process x 2 micro-batches;
    # with batch_size 1 some micro-batches supervise nothing, on one rank but not the other
    data = _mixed_file(traj, tmp_path / "mixed.jsonl")
    args = ["--model", model_dir, "--data", data]
    args += ["--loss.td_window", "3", "--loss.rank_window", "3"]
    args += ["--max_steps", "4", "--save_every", "2", "--batch_size", "1", "--lr", "0.01"]
    args += ["--lora_rank", "4", "--lora_dropout", "0", "--progress", "false"]
    args += ["--num_threads", "1"]
    one = tmp_path / "one"
    assert main(["train", *args, "--grad_accum", "2", "--output_dir", str(one)]) == 0
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--main_process_port", str(free_port)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two"
    cmd = [*launch, "-m", "tabom.cli", "train", *args, "--grad_accum", "1"]
    run = subprocess.run(
        [*cmd, "--output_dir", str(two)], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = weights(one / "model"), weights(two / "model")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    log_one = [json.loads(x) for x in (one / "log.jsonl").read_text().splitlines()]
    log_two = [json.loads(x) for x in (two / "log.jsonl").read_text().splitlines()]
    assert [r["n_supervised"] for r in log_one] == [r["n_supervised"] for r in log_two]
    assert sum(r["n_uncut"] for r in log_two) > 0
    # resume the two-process run from step-2: the same bytes as its uninterrupted run
    final = b
    shutil.rmtree(two / "checkpoints" / "step-4")
    shutil.rmtree(two / "model")
    run = subprocess.run(
        [*cmd, "--output_dir", str(two), "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    again = weights(two / "model")
    assert all(torch.equal(final[k], again[k]) for k in final)


@pytest.mark.parametrize("lora", [0, 4])
def test_gradient_checkpointing_bf16_and_loss_chunk_train(model_dir, traj, tmp_path, lora):
    """``tabom train`` with activation checkpointing, bf16 autocast and the chunked head loss:
    the loss falls and every trainable parameter moves (the head runs outside the model's
    forward, under the same autocast)."""
    cfg = config(
        model_dir,
        traj,
        tmp_path / "run",
        gradient_checkpointing=True,
        mixed_precision="bf16",
        loss_chunk=2,
        lora_rank=lora,
        lr=1e-2 if lora == 0 else 5e-2,
    )
    from accelerate.state import AcceleratorState

    before = fixed_batch_loss(load_model(model_dir), cfg)
    AcceleratorState._reset_state(reset_partial_state=True)  # a process-wide singleton:
    try:  # another test's Accelerator fixed fp32 (accelerate's own tests reset it so)
        out = train(cfg)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["total"]) for r in log) and log[0]["rank"] > 0
    after = fixed_batch_loss(load_model(str(out / "model")), cfg)
    assert after < before - 0.02, (before, after)
    init, final = weights(Path(model_dir)), weights(out / "model")
    changed = [k for k in init if not torch.equal(init[k], final[k])]
    if lora:  # the merged adapter: exactly the LoRA targets moved
        assert changed and all(".q_proj." in k or ".v_proj." in k for k in changed)
    else:
        assert len(changed) == len(init)
