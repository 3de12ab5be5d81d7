"""Training features on the native LLaDA / Dream classes, the remote-code path, and the CLI.

Gradient checkpointing must give the same LoRA gradients while recomputing activations; LoRA
targets ``q_proj`` / ``v_proj`` are the native module names. The remote-code path
(``llada-remote`` / ``dream-remote``) keeps its explicit choice, the dtype keyword of the
installed transformers, a clear error when the remote file fails to import, and a save that
survives Dream's old ``GenerationConfig.validate``. The CLI runs distill -> train (tabom, LoRA
16, gradient checkpointing) -> eval -> export on temporary copies of the real-code fixtures.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from realdata import REAL_CODE
from tabom.cli import main
from tabom.commands.train import TrainConfig
from tabom.models import enable_gradient_checkpointing, load_model, save_model
from tabom.models.hf import REMOTE_CODE_TRANSFORMERS, dtype_keyword, tolerant_generation_config

FIXTURES = REAL_CODE
NATIVE_FIXTURES = ["llada-masked", "dream"]


def _lora(dlm, r: int = 16):
    peft = pytest.importorskip("peft")
    cfg = peft.LoraConfig(r=r, lora_alpha=r, target_modules=list(dlm.spec.lora_targets))
    return peft.get_peft_model(dlm.model, cfg)


def _loss(model, dlm, ids, mask):
    from tabom.models.base import DiffusionLM

    logits = DiffusionLM(model, dlm.tokenizer, dlm.spec)(ids, mask)  # (B, L, V)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())


@pytest.mark.parametrize("name", NATIVE_FIXTURES)
def test_gradient_checkpointing_recomputes_and_keeps_lora_gradients(name):
    saved = load_file(str(FIXTURES / name / "cases.safetensors"))
    ids, mask = saved["padded_batch.input_ids"], saved["padded_batch.attention_mask"]
    grads, calls = {}, {}
    for ckpt in (False, True):
        dlm = load_model(str(FIXTURES / name), dtype="float32")
        torch.manual_seed(0)  # the same LoRA init in both runs
        model = _lora(dlm)
        lora = sorted(n for n, p in model.named_parameters() if p.requires_grad)
        n_layers = dlm.model.config.num_hidden_layers
        assert len(lora) == 2 * 2 * n_layers  # lora_A, lora_B on q_proj and v_proj per layer
        assert all(".self_attn.q_proj." in n or ".self_attn.v_proj." in n for n in lora)
        if ckpt:
            enable_gradient_checkpointing(model)
        count = [0]
        mlp = dlm.model.model.layers[0].mlp
        forward = mlp.forward

        def counted(*args, forward=forward, count=count, **kwargs):
            count[0] += 1
            return forward(*args, **kwargs)

        mlp.forward = counted  # (module hooks are not re-run by the recomputation)
        model.train()
        _loss(model, dlm, ids, mask).backward()
        grads[ckpt] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        calls[ckpt] = count[0]
    assert (calls[False], calls[True]) == (1, 2)  # recomputed once in backward
    assert any(bool(g.abs().sum() > 0) for g in grads[True].values())
    for n, g in grads[False].items():
        torch.testing.assert_close(grads[True][n], g, rtol=1e-5, atol=1e-7)


def test_gradient_checkpointing_refuses_a_model_without_it():
    class Plain(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match="gradient_checkpointing: Plain does not support it"):
        enable_gradient_checkpointing(Plain())


def test_train_config_checks_gradient_checkpointing():
    assert TrainConfig(data="x.jsonl", gradient_checkpointing=True).gradient_checkpointing
    with pytest.raises(ValueError, match="gradient_checkpointing must be true or false"):
        TrainConfig(data="x.jsonl", gradient_checkpointing="yes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- remote-code path


def test_dtype_keyword_follows_the_installed_transformers(monkeypatch):
    import transformers

    monkeypatch.setattr(transformers, "__version__", "4.55.2")
    assert dtype_keyword() == "torch_dtype"
    monkeypatch.setattr(transformers, "__version__", "4.57.6")
    assert dtype_keyword() == "dtype"
    monkeypatch.setattr(transformers, "__version__", "5.24.0")
    assert dtype_keyword() == "dtype"


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_remote_code_that_fails_to_import_names_the_working_range(tmp_path, family):
    """The checkpoint's auto_map points at a file of ours that fails like a 4.x file on 5.x.

    (No LLaDA / Dream file is ever run with ``trust_remote_code``: only this stand-in.)
    """
    folder = tmp_path / family
    shutil.copytree(FIXTURES / family, folder)
    (folder / "configuration_broken.py").write_text(
        "from transformers.modeling_rope_utils import NO_SUCH_NAME_IN_THIS_VERSION\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_broken.BrokenConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError) as err:
        load_model(str(folder), backend=f"{family}-remote")
    msg = str(err.value)
    assert f"transformers{REMOTE_CODE_TRANSFORMERS}" in msg and f"backend '{family}'" in msg
    assert str(folder) in msg and "NO_SUCH_NAME_IN_THIS_VERSION" in msg
    assert load_model(str(folder)).spec.name == family  # the native default is unaffected


def test_a_generation_config_without_strict_still_saves(tmp_path):
    """Dream's ``DreamGenerationConfig.validate(self, is_init=False)``: saving passed ``strict``."""
    from transformers import GenerationConfig

    class OldGenerationConfig(GenerationConfig):
        def validate(self, is_init=False):  # the remote file's signature
            return super().validate()

    dlm = load_model(str(FIXTURES / "dream"), dtype="float32")
    dlm.model.generation_config.__class__ = OldGenerationConfig  # (5.x's __init__ rejects it)
    with pytest.raises(TypeError, match="strict"):  # the bug, as transformers meets it
        dlm.model.save_pretrained(tmp_path / "raw")
    tolerant_generation_config(dlm.model)
    save_model(dlm, tmp_path / "model")
    again = load_model(str(tmp_path / "model"))
    gen = json.loads((tmp_path / "model" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == dlm.spec.eos_token_id and again.spec == dlm.spec


# --------------------------------------------------------------------------- the CLI


def settings_argv(command: str) -> list[str]:
    """The decode / loss flags of each command (the one place their names live in this file)."""
    decode = ["--decode.gen_length", "4", "--decode.steps", "4", "--decode.temperature", "0"]
    if command == "distill":
        return decode
    if command == "train":
        return ["--loss.td_window", "2", "--loss.rank_window", "2", "--loss.rank_margin", "0.1"]
    if command == "eval":
        return ["--budget_tokens_per_step", "1", "--decode.temperature", "0"]
    raise ValueError(command)


@pytest.mark.parametrize("name", NATIVE_FIXTURES)  # about 1 s each
def test_distill_train_eval_export_through_the_cli(tmp_path, name, capsys):
    model = tmp_path / "base"
    shutil.copytree(FIXTURES / name, model)  # a user's downloaded snapshot
    common = ["--num_threads", "1", "--progress", "false"]
    traj = tmp_path / "traj.jsonl"
    task = "addition:min_digits=1,max_digits=1"
    argv = ["distill", "--model", str(model), "--task", task, "--n_prompts", "4"]
    argv += ["--n_samples", "1", "--keep", "all", "--ks", "1", "--output", str(traj)]
    assert main([*argv, *settings_argv("distill"), *common]) == 0
    recs = [json.loads(line) for line in traj.read_text().splitlines()]
    base = load_model(str(model))
    assert len(recs) == 4 and {r["gen"]["backend"] for r in recs} == {base.spec.name}
    assert recs[0]["prompt_token_ids"] == base.encode_prompt(recs[0]["prompt"])  # templated
    assert all(sorted(r["decoding_order"]) == [0, 1, 2, 3] for r in recs)

    out = tmp_path / "train"
    argv = ["train", "--model", str(model), "--data", str(traj), "--objective", "tabom"]
    argv += ["--lora_rank", "16", "--gradient_checkpointing", "true", "--max_steps", "2"]
    argv += ["--batch_size", "4", "--grad_accum", "1", "--lr", "1e-2", "--warmup_steps", "0"]
    argv += ["--mixed_precision", "fp32", "--output_dir", str(out)]
    assert main([*argv, *settings_argv("train"), *common]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(math.isfinite(r["ce"]) for r in log)
    assert all(r["n_supervised"] > 0 for r in log)
    trained = load_model(str(out / "model"))  # the merged model reloads
    assert trained.spec == base.spec and type(trained.model) is type(base.model)
    before = dict(base.model.named_parameters())
    changed = {n for n, p in trained.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".q_proj." in n or ".v_proj." in n for n in changed)

    res = tmp_path / "eval.json"
    argv = ["eval", "--model", str(out / "model"), "--tasks", "addition:max_digits=1"]
    argv += ["--n_examples", "2", "--output", str(res), "--num_threads", "1"]
    assert main([*argv, *settings_argv("eval")]) == 0
    assert json.loads(res.read_text())["results"]["addition:max_digits=1"]["n_examples"] == 2
    assert "| set |" in capsys.readouterr().out

    hub = tmp_path / "hub"
    assert main(["export", "--model", str(out / "model"), "--output", str(hub)]) == 0
    exported, original = (
        load_file(str(hub / "model.safetensors")),
        load_file(str(model / "model.safetensors")),
    )
    assert sorted(exported) == sorted(original)
    assert (hub / "config.json").read_bytes() == (model / "config.json").read_bytes()
    again = load_model(str(hub))
    x = torch.tensor([recs[0]["prompt_token_ids"] + recs[0]["response_token_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(again(x), trained(x), rtol=0, atol=0)


def test_export_command_refuses_a_model_without_hub_layout(tmp_path, capsys):
    assert main(["export", "--model", "tiny-base", "--output", str(tmp_path / "x")]) == 2
    assert "no hub layout" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("recipe", ["llada_math", "llada_code", "dream_math", "dream_code"])
def test_the_7_8b_recipes_use_the_native_backends_with_gradient_checkpointing(recipe):
    from tabom.cli import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / f"{recipe}.yaml"
    cfg = load_config(TrainConfig, str(path), [])
    assert cfg.gradient_checkpointing and cfg.backend == recipe.split("_")[0]
    assert cfg.lora_targets == ["q_proj", "v_proj"] and cfg.lora_rank == 16
