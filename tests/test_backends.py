"""The pretrained backends (llada, dream, hf-mlm) on tiny random stand-ins, offline (DESIGN §2).

Each backend is loaded through ``load_model`` from a saved folder, exactly as a downloaded
checkpoint would be: a bidirectional Llama stands in for LLaDA, a bidirectional Qwen2 with
shifted logits for Dream, ``BertForMaskedLM`` and ``ModernBertForMaskedLM`` for ``hf-mlm``.
Two fake remote-code models (``model_type`` ``llada`` / ``Dream``, ``trust_remote_code``)
exercise the remote-code path with LLaDA's and Dream's forward signatures.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tabom.batch_decode import decode_texts
from tabom.cli import main
from tabom.commands.train import TrainConfig, load_train_items
from tabom.decoding import DecodeConfig, decode, pad_prompts
from tabom.errors import TabomError
from tabom.models import (
    backend_from_config,
    detect_backend,
    load_model,
    save_model,
)
from tabom.models.base import DiffusionLM, self_pad_attention_mask
from tabom.models.standin import (
    DREAM_STYLE_TEMPLATE,
    LLADA_STYLE_TEMPLATE,
    STANDINS,
    build_standin,
    make_standin,
    save_standin,
)
from tabom.models.tiny import build_char_tokenizer

PROMPTS = ["7+5=", "12+30=", "1+1="]  # different lengths: left padding in every batch
EXPECTED = {
    "llada": dict(
        name="llada",
        shift=False,
        attention="4d",
        template=True,
        lora=("q_proj", "v_proj"),
    ),
    "dream": dict(
        name="dream", shift=True, attention="4d", template=True, lora=("q_proj", "v_proj")
    ),
    "bert": dict(
        name="hf-mlm", shift=False, attention="2d", template=False, lora=("query", "value")
    ),
    "modernbert": dict(name="hf-mlm", shift=False, attention="2d", template=False, lora=("Wqkv",)),
}


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> dict[str, str]:
    """Each stand-in saved once: kind -> folder."""
    root = tmp_path_factory.mktemp("standins")
    out = {}
    for kind in STANDINS:
        model, tok = build_standin(kind, seed=1)
        backend = {"llada": "llada", "dream": "dream"}.get(kind)  # masked LMs: detected
        out[kind] = str(save_standin(model, tok, root / kind, backend=backend))
    return out


def greedy(dlm: DiffusionLM, prompts: list[str], gen_length: int = 8, block=None):
    """Decode ``prompts`` as one left-padded batch, one token per step."""
    ids, mask = pad_prompts([dlm.encode_prompt(p) for p in prompts], dlm.spec.pad_token_id)
    cfg = DecodeConfig(gen_length=gen_length, steps=gen_length, block_length=block)
    dev = dlm.device
    return decode(dlm, ids.to(dev), mask.to(dev), cfg, mask_token_id=dlm.mask_token_id)


# --------------------------------------------------------------------------- detection, specs


def test_backend_is_detected_from_the_config():
    assert backend_from_config({"model_type": "llada"}) == "llada"
    assert backend_from_config({"model_type": "Dream"}) == "dream"
    assert backend_from_config({"model_type": "bert", "architectures": ["BertForMaskedLM"]}) == (
        "hf-mlm"
    )
    with pytest.raises(ValueError, match="pass backend="):
        backend_from_config({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "x")


def test_missing_models_are_clear_errors(monkeypatch):
    from transformers import PretrainedConfig

    with pytest.raises(FileNotFoundError, match="not a shipped model"):
        load_model("no-such-model")

    def offline(name, **kwargs):  # what the hub client raises offline for an uncached id
        raise OSError(f"We couldn't connect to the hub to load {name}")

    monkeypatch.setattr(PretrainedConfig, "get_config_dict", offline)
    with pytest.raises(FileNotFoundError, match="cannot be fetched"):
        load_model("no-such-org/no-such-model")
    with pytest.raises(ValueError, match="backend must be"):
        load_model("tiny-base", backend="gpt")


@pytest.mark.parametrize("kind", STANDINS)
def test_each_standin_loads_with_its_backend_data(standins, kind):
    want = EXPECTED[kind]
    assert detect_backend(standins[kind]) == want["name"]
    dlm = load_model(standins[kind])
    spec = dlm.spec
    assert (spec.name, spec.shift_logits, spec.attention) == (
        want["name"],
        want["shift"],
        want["attention"],
    )
    assert spec.chat_template is want["template"] and spec.lora_targets == want["lora"]
    tok = dlm.tokenizer
    assert (spec.mask_token_id, spec.eos_token_id, spec.pad_token_id) == (
        tok.mask_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    assert spec.position_ids  # every stand-in's forward takes position ids
    assert dlm.vocab_size == len(tok) and not dlm.model.training


def test_llada_takes_the_mask_id_from_the_config_and_dream_from_the_tokenizer(tmp_path):
    for kind, want in (("llada", 3), ("dream", 2)):
        model, tok = build_standin(kind)
        model.config.mask_token_id = 3  # differs from the tokenizer's <mask> (2)
        save_standin(model, tok, tmp_path / kind, backend=kind)
        assert load_model(str(tmp_path / kind)).mask_token_id == want


def _tokenizer_without_mask():
    from transformers import PreTrainedTokenizerFast

    base = build_char_tokenizer()
    return PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


@pytest.mark.parametrize("kind", ["dream", "bert"])
def test_a_checkpoint_without_mask_token_is_refused_by_name(tmp_path, kind):
    model, tok = build_standin(kind, tokenizer=_tokenizer_without_mask())
    save_standin(model, tok, tmp_path / kind, backend="dream" if kind == "dream" else None)
    with pytest.raises(ValueError, match=rf"{kind}: no mask token"):
        load_model(str(tmp_path / kind))


def test_a_causal_checkpoint_is_refused(tmp_path):
    model, tok = build_standin("llada")
    model.config.is_causal = True
    save_standin(model, tok, tmp_path / "causal", backend="llada")
    with pytest.raises(
        ValueError, match=r"is_causal true; the llada backend needs is_causal false"
    ):
        load_model(str(tmp_path / "causal"))
    bert, tok = build_standin("bert")
    bert.config.is_decoder = True
    save_standin(bert, tok, tmp_path / "decoder")
    with pytest.raises(ValueError, match="is_decoder"):
        load_model(str(tmp_path / "decoder"))


def test_chat_templates_and_plain_prompts(standins):
    llada, dream, bert = (load_model(standins[k]) for k in ("llada", "dream", "bert"))
    assert llada.tokenizer.decode(llada.encode_prompt("2+2?")) == "u: 2+2?\na: "
    assert dream.tokenizer.decode(dream.encode_prompt("2+2?")) == "u: 2+2?\na: "
    # LLaDA's template appends the assistant header even without add_generation_prompt
    msgs = [{"role": "user", "content": "x"}]
    assert llada.tokenizer.apply_chat_template(msgs, tokenize=False).endswith("a: ")
    assert not dream.tokenizer.apply_chat_template(msgs, tokenize=False).endswith("a: ")
    # no template: the bare text, one id per character with this tokenizer
    assert bert.encode_prompt("2+2?") == bert.tokenizer("2+2?")["input_ids"]
    assert len(bert.encode_prompt("2+2?")) == 4


# --------------------------------------------------------------------------- forward and decode


def test_self_pad_mask_never_has_an_empty_row():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    m = self_pad_attention_mask(mask)  # (B, 1, L, L) bool
    assert m.shape == (2, 1, 5, 5) and bool(m.any(-1).all())
    assert torch.equal(m[0, 0, 0], torch.tensor([True, False, True, True, True]))  # pad query
    assert not bool(m[0, 0, 2:, :2].any())  # real queries never see the padding
    assert bool(m[1].all())
    add = self_pad_attention_mask(mask, torch.bfloat16)
    assert add.dtype == torch.bfloat16 and torch.equal(add == 0, m)


def assert_rounding_tie(dlm, batch, i, alone, kind, prompt) -> None:
    """Row ``i`` of a padded batch decoded otherwise than the prompt alone: at the first step
    where they part, the two must have seen the same state with logits equal to float rounding
    (so padding leaked nothing), and the two positions chosen must have had confidences within
    rounding of each other (a tie the batch's other kernel broke the other way)."""
    d_batch, d_alone = batch.decoding_order[i], alone.decoding_order[0]
    step = int(min(d_batch[d_batch != d_alone].min(), d_alone[d_batch != d_alone].min()))
    before = d_alone < step  # the state both reached: the tokens decoded before that step
    assert torch.equal(before, d_batch < step), (kind, prompt)
    assert torch.equal(alone.response_ids[0][before], batch.response_ids[i][before])
    T = d_alone.shape[0]

    def state(out, row):
        x = out.sequences[row].clone()
        x[-T:][~before] = dlm.mask_token_id
        return x[None], out.attention_mask[row][None]

    x_b, m_b = state(batch, i)
    x_a, m_a = state(alone, 0)
    ids_b, mask_b = batch.sequences.clone(), batch.attention_mask
    ids_b[i] = x_b[0]
    logits_b = dlm(ids_b, mask_b)[i, -T:]  # the padded batch, row i at that state
    logits_a = dlm(x_a, m_a)[0, -T:]
    torch.testing.assert_close(logits_b, logits_a, rtol=1e-4, atol=1e-4)
    q = torch.softmax(logits_a.float(), -1).max(-1).values
    picked = ((d_batch == step) | (d_alone == step)) & ~before
    assert float(q[picked].max() - q[picked].min()) < 1e-4, (kind, prompt, q[picked])


@pytest.mark.parametrize("kind", STANDINS)
def test_left_padded_batch_decodes_like_each_prompt_alone(standins, kind):
    dlm = load_model(standins[kind])
    batch = greedy(dlm, PROMPTS, block=4)
    for i, p in enumerate(PROMPTS):
        alone = greedy(dlm, [p], block=4)
        same = torch.equal(batch.response_ids[i], alone.response_ids[0]) and torch.equal(
            batch.decoding_order[i], alone.decoding_order[0]
        )
        if not same:  # only a near-tie that float rounding broke the other way may explain it
            assert_rounding_tie(dlm, batch, i, alone, kind, p)
    logits = dlm(batch.sequences, batch.attention_mask)  # pad rows included
    assert not bool(torch.isnan(logits).any())
    assert sorted(batch.decoding_order[0].tolist()) == list(range(8))


class ShiftedOutputs(torch.nn.Module):
    """``inner`` with its outputs moved one position left: raw'[:, j] = raw[:, j + 1].

    Realigned by a Dream-style backend (aligned[:, j] = raw'[:, j - 1] = raw[:, j]), it must
    decode exactly like ``inner`` unshifted.
    """

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        raw = self.inner(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).logits
        return SimpleNamespace(logits=torch.cat([raw[:, 1:], raw[:, :1]], dim=1))

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])  # a boolean and an additive 4-D mask
def test_dream_path_equals_an_unshifted_model_by_construction(standins, attn):
    dream = load_model(standins["dream"])
    dream.model.config._attn_implementation = attn
    plain = DiffusionLM(
        dream.model, dream.tokenizer, dataclasses.replace(dream.spec, shift_logits=False)
    )
    shifted = DiffusionLM(ShiftedOutputs(dream.model), dream.tokenizer, dream.spec)
    a, b = greedy(plain, PROMPTS), greedy(shifted, PROMPTS)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.decoding_order, b.decoding_order)
    la = plain(a.sequences, a.attention_mask)
    lb = shifted(a.sequences, a.attention_mask)
    torch.testing.assert_close(la[:, 1:], lb[:, 1:], rtol=0, atol=0)


def test_native_dream_always_sees_a_4d_mask(standins, monkeypatch):
    dlm = load_model(standins["dream"])
    seen = []
    forward = dlm.model.forward

    def spy(**kw):
        seen.append(None if kw.get("attention_mask") is None else tuple(kw["attention_mask"].shape))
        return forward(**kw)

    monkeypatch.setattr(dlm.model, "forward", spy)
    x = torch.full((2, 6), 40)
    dlm(x, torch.ones_like(x))
    dlm(x, torch.tensor([[0, 1, 1, 1, 1, 1], [1] * 6]))
    dlm(x)  # no mask given: all true
    assert seen == [(2, 1, 6, 6)] * 3


def test_lora_default_targets_wrap_every_backend(standins):
    peft = pytest.importorskip("peft")
    for kind in STANDINS:
        dlm = load_model(standins[kind])
        cfg = peft.LoraConfig(r=2, lora_alpha=2, target_modules=list(dlm.spec.lora_targets))
        model = peft.get_peft_model(dlm.model, cfg)
        wrapped = DiffusionLM(model, dlm.tokenizer, dlm.spec)
        out = greedy(wrapped, PROMPTS[:2], gen_length=4)
        loss = wrapped(out.sequences, out.attention_mask).float().logsumexp(-1).mean()
        loss.backward()
        grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
        assert grads and all(g is not None for g in grads), kind


# --------------------------------------------------------------------------- remote code

_FAKE_CONFIG = """
from transformers import PretrainedConfig


class FakeConfig(PretrainedConfig):
    model_type = "{model_type}"

    def __init__(self, vocab_size=100, d_model=16, mask_token_id=None, **kwargs):
        self.vocab_size, self.d_model, self.mask_token_id = vocab_size, d_model, mask_token_id
        super().__init__(**kwargs)
"""

_FAKE_MODEL = '''
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_fake import FakeConfig


class FakeLM(PreTrainedModel):
    """One bidirectional attention layer with rotary-free absolute positions."""

    config_class = FakeConfig
    base_model_prefix = "fake"
    _supports_sdpa = True

    def __init__(self, config):
        super().__init__(config)
        d = config.d_model
        self.wte = torch.nn.Embedding(config.vocab_size, d)
        self.wpe = torch.nn.Embedding(64, d)
        self.q_proj, self.k_proj, self.v_proj = (torch.nn.Linear(d, d) for _ in range(3))
        self.ff_out = torch.nn.Linear(d, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def get_output_embeddings(self):
        return self.ff_out

    def _layer(self, input_ids, mask, positions):
        x = self.wte(input_ids) + self.wpe(positions)
        q, k, v = (p(x)[:, None] for p in (self.q_proj, self.k_proj, self.v_proj))
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)[:, 0]
        return self.ff_out(x + att)
{forward}
'''

_LLADA_FORWARD = """
    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, attention_bias=None,
                past_key_values=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        # like LLaDA's released code: no position ids, attention_mask ignored
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        return CausalLMOutputWithPast(logits=self._layer(input_ids, None, positions))
"""

_DREAM_FORWARD = """
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        # like Dream's: a 4-D mask (or none) straight into SDPA; logits shifted by one
        assert attention_mask is None or attention_mask.dim() == 4, "Dream needs a 4-D mask"
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        logits = self._layer(input_ids, attention_mask, position_ids)
        return CausalLMOutputWithPast(logits=torch.cat([logits[:, 1:], logits[:, :1]], 1))
"""


def _fake_remote_checkpoint(path: Path, model_type: str, forward: str, template: str) -> Path:
    """A folder like a hub checkpoint with remote code: config + code + weights + tokenizer."""
    from transformers import AutoConfig, AutoModel

    path.mkdir(parents=True)
    (path / "configuration_fake.py").write_text(_FAKE_CONFIG.format(model_type=model_type))
    (path / "modeling_fake.py").write_text(_FAKE_MODEL.format(forward=forward))
    tok = _tokenizer_without_mask() if model_type == "llada" else build_char_tokenizer()
    tok.chat_template = template
    config = {
        "model_type": model_type,
        "vocab_size": len(tok),
        "d_model": 16,
        "mask_token_id": 2 if model_type == "llada" else None,
        "eos_token_id": 1,
        "architectures": ["FakeLM"],
        "auto_map": {
            "AutoConfig": "configuration_fake.FakeConfig",
            "AutoModel": "modeling_fake.FakeLM",
        },
    }
    (path / "config.json").write_text(json.dumps(config))
    cfg = AutoConfig.from_pretrained(path, trust_remote_code=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModel.from_config(cfg, trust_remote_code=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_remote_code_checkpoints_load_by_model_type(tmp_path, family):
    from tabom.models.standin import DREAM_STYLE_TEMPLATE, LLADA_STYLE_TEMPLATE

    model_type, forward, template = {
        "llada": ("llada", _LLADA_FORWARD, LLADA_STYLE_TEMPLATE),
        "dream": ("Dream", _DREAM_FORWARD, DREAM_STYLE_TEMPLATE),
    }[family]
    path = _fake_remote_checkpoint(tmp_path / family, model_type, forward, template)
    assert detect_backend(str(path)) == family  # from config.json alone, no tabom file
    dlm = load_model(str(path), trust_remote_code=True)  # the explicit remote-code choice
    assert type(dlm.model).__name__ == "FakeLM"  # AutoModel through auto_map
    assert dlm.spec.name == f"{family}-remote" and dlm.mask_token_id == 2  # llada: config
    assert dlm.spec.position_ids is (family == "dream")  # LLaDA's forward takes none
    assert dlm.spec.chat_template
    out = greedy(dlm, PROMPTS, gen_length=4)
    assert not bool(torch.isnan(dlm(out.sequences, out.attention_mask)).any())
    if family == "dream":  # 4-D mask and positions: a padded row decodes as alone
        alone = greedy(dlm, PROMPTS[:1], gen_length=4)
        assert torch.equal(out.response_ids[0], alone.response_ids[0])
    # a folder's tabom_backend.json naming remote code is not a choice of the user: refused
    # under auto, loaded with trust_remote_code (distill / eval: --trust_remote_code true)
    (path / "tabom_backend.json").write_text(json.dumps({"backend": f"{family}-remote"}))
    with pytest.raises(TabomError, match="trust_remote_code"):
        load_model(str(path))
    assert load_model(str(path), trust_remote_code=True).spec == dlm.spec
    # a saved copy (what tabom train writes) loads as the same backend with its code
    save_model(dlm, tmp_path / "copy")
    again = load_model(str(tmp_path / "copy"), trust_remote_code=True)
    assert again.spec == dlm.spec
    x = out.sequences
    torch.testing.assert_close(again(x, out.attention_mask), dlm(x, out.attention_mask))


# --------------------------------------------------------------------------- the CLI


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("kind", STANDINS)
def test_distill_train_eval_through_the_cli(standins, tmp_path, kind, capsys):
    model = standins[kind]
    task = "addition:min_digits=1,max_digits=2"  # 4 response tokens
    traj = tmp_path / "traj.jsonl"
    common = ["--num_threads", "1"]
    argv = ["distill", "--model", model, "--task", task, "--n_prompts", "4", "--n_samples", "1"]
    argv += ["--decode.temperature", "0", "--keep", "all", "--ks", "1", "--output", str(traj)]
    assert main([*argv, "--progress", "false", *common]) == 0
    recs = [json.loads(line) for line in traj.read_text().splitlines()]
    dlm = load_model(model)
    assert len(recs) == 4 and recs[0]["gen"]["backend"] == dlm.spec.name
    assert recs[0]["prompt_token_ids"] == dlm.encode_prompt(recs[0]["prompt"])  # templated
    assert all(sorted(r["decoding_order"]) == [0, 1, 2, 3] for r in recs)

    out = tmp_path / "train"
    argv = ["train", "--model", model, "--data", str(traj), "--objective", "tabom"]
    argv += ["--max_steps", "2", "--batch_size", "4", "--grad_accum", "1", "--lr", "1e-2"]
    argv += ["--warmup_steps", "0", "--lora_rank", "0"]
    argv += ["--loss.td_window", "2", "--loss.rank_window", "2"]
    argv += ["--mixed_precision", "fp32", "--output_dir", str(out), "--progress", "false"]
    assert main([*argv, *common]) == 0
    log = _log(out / "log.jsonl")
    assert len(log) == 2 and all(math.isfinite(r["ce"]) and math.isfinite(r["rank"]) for r in log)
    assert all(r["n_supervised"] > 0 for r in log)
    trained = load_model(str(out / "model"))
    assert trained.spec == dlm.spec  # the same backend, from tabom_backend.json
    before = dict(dlm.model.named_parameters())
    changed = [n for n, p in trained.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed  # the weights moved

    res = tmp_path / "eval.json"
    spec = "addition:max_digits=2"  # --tasks is a comma-separated list: a spec without commas
    argv = ["eval", "--model", str(out / "model"), "--tasks", spec, "--n_examples", "3"]
    assert main([*argv, "--output", str(res), *common]) == 0
    r = json.loads(res.read_text())["results"][spec]
    assert r["n_examples"] == 3 and r["nfe_per_answer"] == 4.0
    assert "| set |" in capsys.readouterr().out


def test_make_standin_round_trips(tmp_path):
    dlm = make_standin("dream", tmp_path / "d")
    save_model(dlm, tmp_path / "copy")
    again = load_model(str(tmp_path / "copy"))
    assert again.spec == dlm.spec and again.encode_prompt("hi") == dlm.encode_prompt("hi")


def test_tiny_dream_tokenizer_survives_save_and_load(tmp_path):
    """A Qwen2 config must not swap the character tokenizer for Qwen2's (it drops spaces)."""
    from tabom.models import TinyModelConfig, build_tiny, save_tiny

    dlm = build_tiny(TinyModelConfig(family="qwen2", hidden_size=32, num_layers=1, num_heads=4))
    save_tiny(dlm, tmp_path / "m")
    text = "15 + 7 =\n22"
    again = load_model(str(tmp_path / "m"))
    assert (
        again.encode_prompt(text) == dlm.encode_prompt(text)
        and len(again.encode_prompt(text)) == 11
    )


def test_accelerate_configs_are_valid():
    from accelerate.commands.config.config_args import load_config_from_file

    root = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    kinds = {}
    for name in ("single_gpu", "multi_gpu_ddp", "fsdp"):
        cfg = load_config_from_file(str(root / f"{name}.yaml"))
        kinds[name] = (str(cfg.distributed_type).split(".")[-1], cfg.mixed_precision)
    assert kinds == {
        "single_gpu": ("NO", "bf16"),
        "multi_gpu_ddp": ("MULTI_GPU", "bf16"),
        "fsdp": ("FSDP", "bf16"),
    }


# --------------------------------------------------------------------------- end-of-turn tokens

STOP_TOKEN = {"llada": "<|eot_id|>", "dream": "<|im_end|>"}


@pytest.fixture(scope="module")
def chat_standins(tmp_path_factory) -> dict[str, str]:
    """LLaDA and Dream stand-ins whose tokenizer has the family's end-of-turn token."""
    root = tmp_path_factory.mktemp("chat")
    out = {}
    for kind, stop in STOP_TOKEN.items():
        tok = build_char_tokenizer()
        tok.add_special_tokens({"additional_special_tokens": [stop]})
        tok.chat_template = LLADA_STYLE_TEMPLATE if kind == "llada" else DREAM_STYLE_TEMPLATE
        model, tok = build_standin(kind, tokenizer=tok, seed=1)
        out[kind] = str(save_standin(model, tok, root / kind, backend=kind))
    return out


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_sft_ground_truth_ends_with_the_stop_token_before_the_eos_tail(
    chat_standins, tmp_path, kind
):
    dlm = load_model(chat_standins[kind])
    tok, eos = dlm.tokenizer, dlm.spec.eos_token_id
    stop = tok.convert_tokens_to_ids(STOP_TOKEN[kind])
    assert dlm.spec.stop_token_ids == (stop,) and stop != eos
    rows = [("1+2=", "3"), ("9+9=", "18")]
    data = tmp_path / "gt.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "answer": a}) + "\n" for q, a in rows))
    cfg = TrainConfig(model=chat_standins[kind], objective="sft", data=str(data))
    items, _ = load_train_items(cfg, dlm)
    for item, (prompt, answer) in zip(items, rows, strict=True):
        ids = tok(answer, add_special_tokens=False)["input_ids"]
        assert item.prompt_ids.tolist() == dlm.encode_prompt(prompt)  # the chat template
        # longest answer (2 tokens) + the stop token + one EOS: 4 response positions
        assert item.response_ids.tolist() == ids + [stop] + [eos] * (3 - len(ids))
        assert tok.decode(item.response_ids[: len(ids)]) == answer


class ScriptedLM(torch.nn.Module):
    """Proposes ``script[j]`` at response position j whatever the input; records its inputs."""

    def __init__(self, script: list[int], vocab_size: int, shift: bool) -> None:
        super().__init__()
        self.script, self.vocab_size, self.shift = script, vocab_size, shift
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # where DiffusionLM.device looks
        self.inputs: list[torch.Tensor] = []

    def forward(self, input_ids, **kwargs):
        self.inputs.append(input_ids.clone())
        B, L = input_ids.shape
        T = len(self.script)
        raw = torch.zeros(B, L, self.vocab_size)
        pos = torch.arange(L - T, L) - int(self.shift)  # raw[j - 1] predicts token j (Dream)
        raw[:, pos, torch.tensor(self.script)] = 10.0
        return SimpleNamespace(logits=raw)


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_decode_texts_uses_the_chat_template_and_cuts_at_the_stop_token(chat_standins, kind):
    loaded = load_model(chat_standins[kind])
    tok, spec = loaded.tokenizer, loaded.spec
    ab, cd = (tok(t, add_special_tokens=False)["input_ids"] for t in ("ab", "cd"))
    script = ab + [spec.stop_token_ids[0]] + cd + [spec.eos_token_id] * 3
    net = ScriptedLM(script, len(tok), spec.shift_logits)
    dlm = DiffusionLM(model=net, tokenizer=tok, spec=spec)
    cfg = DecodeConfig(gen_length=len(script), steps=len(script))
    texts, out = decode_texts(dlm, PROMPTS, cfg)
    assert out.response_ids.tolist() == [script] * len(PROMPTS)
    assert texts == ["ab"] * len(PROMPTS)  # not "abcd": cut at the end of turn, not at EOS
    P = out.prompt_length
    for row, prompt in enumerate(PROMPTS):
        real = out.attention_mask[row, :P].bool()
        assert out.sequences[row, :P][real].tolist() == loaded.encode_prompt(prompt)
        assert loaded.encode_prompt(prompt) != tok(prompt, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- GPU (skipped on CPU)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", STANDINS)
def test_bf16_decode_on_cuda(standins, kind):
    dlm = load_model(standins[kind], device="cuda")  # dtype auto: bf16 weights
    assert dlm.device.type == "cuda" and next(dlm.model.parameters()).dtype == torch.bfloat16
    batch = greedy(dlm, PROMPTS, block=4)
    logits = dlm(batch.sequences, batch.attention_mask)
    assert not bool(torch.isnan(logits).any())
    ref = load_model(standins[kind], dtype="fp32", device="cuda")
    full = ref(batch.sequences, batch.attention_mask)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(logits.float()[real], full[real], atol=0.1, rtol=0.1)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_distill_and_one_bf16_train_step_on_cuda(standins, tmp_path, kind):
    pytest.importorskip("peft")
    model, traj = standins[kind], tmp_path / "traj.jsonl"
    argv = ["distill", "--model", model, "--task", "addition:min_digits=1,max_digits=2"]
    argv += ["--n_prompts", "8", "--n_samples", "1", "--decode.temperature", "0", "--keep", "all"]
    assert main([*argv, "--ks", "1", "--output", str(traj), "--progress", "false"]) == 0
    out = tmp_path / "train"
    argv = ["train", "--model", model, "--data", str(traj), "--objective", "tabom"]
    argv += ["--max_steps", "1", "--batch_size", "8", "--grad_accum", "1", "--lora_rank", "4"]
    argv += ["--loss.td_window", "2", "--loss.rank_window", "2", "--warmup_steps", "0"]
    argv += ["--mixed_precision", "bf16", "--output_dir", str(out), "--progress", "false"]
    assert main(argv) == 0
    (rec,) = _log(out / "log.jsonl")
    assert math.isfinite(rec["ce"]) and math.isfinite(rec["rank"]) and rec["grad_norm"] > 0
