"""Tiny random stand-ins for the real backends, for offline tests and GPU smoke runs (DESIGN §2).

No weights of LLaDA, Dream or a BERT can be downloaded here, so each backend is exercised on a
randomly initialised model of the same ``transformers`` family, saved with the backend's name:

| stand-in | class | backend | what it exercises |
|---|---|---|---|
| ``llada`` | ``LlamaForCausalLM``, ``is_causal=False`` | ``llada`` | mask id from ``config.mask_token_id``; a template that always appends the assistant header |
| ``dream`` | ``Qwen2ForCausalLM``, ``is_causal=False`` | ``dream`` | shifted logits, the 4-D self-pad mask, position ids from the mask |
| ``bert`` | ``BertForMaskedLM`` | ``hf-mlm`` | absolute positions, backend detected from ``architectures`` |
| ``modernbert`` | ``ModernBertForMaskedLM`` | ``hf-mlm`` | rotary positions, local attention, ``Wqkv`` LoRA target |

The default tokenizer is the tiny model's character tokenizer with a small chat template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch

from tabom.models.base import BACKEND_FILE, DiffusionLM
from tabom.models.tiny import build_char_tokenizer

StandIn = Literal["llada", "dream", "bert", "modernbert"]
STANDINS: tuple[str, ...] = ("llada", "dream", "bert", "modernbert")
BACKEND_OF = {"llada": "llada", "dream": "dream", "bert": "hf-mlm", "modernbert": "hf-mlm"}

LLADA_STYLE_TEMPLATE = (
    "{% for m in messages %}{{ m['role'][0] }}: {{ m['content'] }}\n{% endfor %}a: "
)
"""Like LLaDA's: the assistant header is appended whatever ``add_generation_prompt`` says."""
DREAM_STYLE_TEMPLATE = (
    "{% for m in messages %}{{ m['role'][0] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}a: {% endif %}"
)
"""Like Qwen2.5's: the assistant header only with ``add_generation_prompt``."""


def _config(kind: str, tok: Any, size: dict[str, int]) -> Any:
    """The ``transformers`` config of a stand-in, with ids from ``tok``."""
    from transformers import BertConfig, LlamaConfig, ModernBertConfig, Qwen2Config

    ids = {
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": None,
    }
    common = {
        "vocab_size": len(tok),
        "hidden_size": size["hidden_size"],
        "intermediate_size": size["intermediate_size"],
        "num_hidden_layers": size["num_layers"],
        "num_attention_heads": size["num_heads"],
        "max_position_embeddings": size["max_length"],
    }
    if kind in ("llada", "dream"):
        cls = LlamaConfig if kind == "llada" else Qwen2Config
        extra = {"mask_token_id": tok.mask_token_id} if kind == "llada" else {}
        return cls(
            **common,
            **ids,
            **extra,
            num_key_value_heads=size["num_heads"],
            is_causal=False,
            use_cache=False,
            tie_word_embeddings=False,
        )
    if kind == "bert":
        return BertConfig(**common, pad_token_id=tok.pad_token_id)
    return ModernBertConfig(
        **common,
        **ids,
        cls_token_id=tok.eos_token_id,
        sep_token_id=tok.eos_token_id,
        local_attention=8,  # small window: local layers differ from global ones at L > 8
        global_attn_every_n_layers=2,
    )


def build_standin(
    kind: StandIn,
    *,
    tokenizer: Any = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 64,
    max_length: int = 256,
    seed: int = 0,
) -> tuple[Any, Any]:
    """A randomly initialised stand-in model and its tokenizer (not yet a :class:`DiffusionLM`).

    Save it with :func:`save_standin` and load it with ``load_model(folder)``: the backend's
    own loader then resolves its spec, exactly as for a real checkpoint.

    Args:
        kind: ``llada``, ``dream``, ``bert`` or ``modernbert``.
        tokenizer: a tokenizer with pad, EOS and mask tokens (default: the character
            tokenizer with a LLaDA- or Dream-style chat template; none for the masked LMs).
        hidden_size: model width.
        num_layers: transformer blocks.
        num_heads: attention heads.
        intermediate_size: MLP width.
        max_length: longest sequence (position embeddings).
        seed: weights are drawn from this seed.

    Returns:
        ``(model, tokenizer)``, the model in eval mode.

    Raises:
        ValueError: an unknown kind.
    """
    from transformers import (
        BertForMaskedLM,
        LlamaForCausalLM,
        ModernBertForMaskedLM,
        Qwen2ForCausalLM,
    )

    if kind not in STANDINS:
        raise ValueError(f"stand-in must be one of {', '.join(STANDINS)}, got {kind!r}")
    tok = tokenizer
    if tok is None:
        tok = build_char_tokenizer()
        if kind in ("llada", "dream"):
            tok.chat_template = LLADA_STYLE_TEMPLATE if kind == "llada" else DREAM_STYLE_TEMPLATE
    size = {
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "intermediate_size": intermediate_size,
        "max_length": max_length,
    }
    config = _config(kind, tok, size)
    model_cls = {
        "llada": LlamaForCausalLM,
        "dream": Qwen2ForCausalLM,
        "bert": BertForMaskedLM,
        "modernbert": ModernBertForMaskedLM,
    }[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.eval(), tok


def save_standin(
    model: Any, tokenizer: Any, path: str | Path, *, backend: str | None = None
) -> Path:
    """Save a stand-in; with ``backend`` also ``tabom_backend.json`` naming it.

    The Llama/Qwen2 stand-ins need the file (their ``model_type`` is not LLaDA's or Dream's);
    a masked LM is found from its ``architectures`` without it.

    Returns:
        The folder.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if backend is not None:
        (path / BACKEND_FILE).write_text(json.dumps({"backend": backend}, indent=2) + "\n")
    return path


def make_standin(kind: StandIn, path: str | Path, **kwargs: Any) -> DiffusionLM:
    """Build, save and load a stand-in through ``load_model`` (the real loading path).

    Args:
        kind: see :func:`build_standin`.
        path: folder to save to.
        **kwargs: :func:`build_standin` arguments.

    Returns:
        The loaded :class:`DiffusionLM`.
    """
    from tabom.models import load_model

    model, tok = build_standin(kind, **kwargs)
    backend = BACKEND_OF[kind] if kind in ("llada", "dream") else None
    save_standin(model, tok, path, backend=backend)
    return load_model(str(path))


__all__ = [
    "BACKEND_OF",
    "DREAM_STYLE_TEMPLATE",
    "LLADA_STYLE_TEMPLATE",
    "STANDINS",
    "build_standin",
    "make_standin",
    "save_standin",
]
