"""The ``llada`` backend: LLaDA (GSAI-ML/LLaDA-8B-Instruct, -Base, LLaDA 1.5) as data (DESIGN §2).

LLaDA-8B is architecturally a Llama (multi-head attention, SwiGLU, RMSNorm, RoPE, no biases,
untied head) with bidirectional attention and OLMo-style parameter names, so the default
(native) path builds ``LlamaForCausalLM`` with ``is_causal=False`` from the checkpoint's own
``config.json`` (:func:`llada_config`) and renames its tensors as they are read
(:data:`LLADA_TO_NATIVE`). No remote code runs. What else differs from the other backends:

- mask id: ``config.mask_token_id`` (126336, ``<|mdm_mask|>``); the tokenizer has none;
- logits: not shifted;
- padding: the 4-D self-pad mask (as Dream's; all true unpadded: a mask every transformers
  version uses as is) and position ids ``cumsum(mask) - 1``, so a left-padded row equals the row alone (the
  mid-2025 hub file ignored the mask); the remote path passes the 2-D mask;
- chat template: Llama-3 style, appends the assistant header whatever
  ``add_generation_prompt`` says; answers end with ``<|eot_id|>`` then ``<|endoftext|>``;
- LoRA targets: ``q_proj``, ``v_proj`` (the same names in LLaDA's blocks and in Llama's).

``llada-remote`` keeps the remote-code path (``trust_remote_code=True``) as an explicit choice.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch

from tabom.models.base import DiffusionLM
from tabom.models.hf import BackendDefaults, load_tokenizer
from tabom.models.native import NativeFamily, load_native

LLADA = BackendDefaults(
    name="llada",
    model_types=("llada",),
    trust_remote_code=False,
    model_class="causal-lm",
    shift_logits=False,
    attention="4d",
    chat_template=True,
    prompt_special_tokens=False,
    mask_sources=("config:mask_token_id", "tokenizer", "token:<|mdm_mask|>"),
    eos_sources=("tokenizer:eos", "config:eos_token_id"),
    stop_tokens=("<|eot_id|>",),
    lora_targets=("q_proj", "v_proj"),
)
"""``llada``: the data that makes LLaDA a backend (native Llama class)."""

LLADA_REMOTE = dataclasses.replace(
    LLADA, name="llada-remote", trust_remote_code=True, model_class="auto", attention="2d"
)
"""``llada-remote``: the checkpoint's own modeling file (``trust_remote_code=True``)."""

LLADA_MASK_TOKEN_ID = 126336
"""LLaDA-8B's ``<|mdm_mask|>`` (``config.mask_token_id``), for reference and tests."""

_BLOCK = {  # LLaDA block name -> Llama decoder-layer name
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "ff_proj": "mlp.gate_proj",  # SwiGLU: act(ff_proj(x)) * up_proj(x)
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ff_norm": "post_attention_layernorm",
}
_NAMES = (  # (hub prefix, native prefix); {i} is the block / layer index
    ("model.transformer.wte", "model.embed_tokens"),
    *(
        (f"model.transformer.blocks.{{i}}.{hub}", f"model.layers.{{i}}.{native}")
        for hub, native in _BLOCK.items()
    ),
    ("model.transformer.ln_f", "model.norm"),
    ("model.transformer.ff_out", "lm_head"),
)


def _pair(src: str, dst: str) -> tuple[str, str]:
    """``(regex, replacement)`` renaming the prefix ``src`` (``{i}`` any index) to ``dst``."""
    pattern = "^" + re.escape(src).replace(re.escape("{i}"), r"(\d+)") + r"\."
    return pattern, dst.replace("{i}", r"\1") + "."


LLADA_TO_NATIVE: tuple[tuple[str, str], ...] = tuple(_pair(h, n) for h, n in _NAMES)
"""Hub parameter name (regex) -> ``LlamaForCausalLM`` name."""
LLADA_TO_HUB: tuple[tuple[str, str], ...] = tuple(_pair(n, h) for h, n in _NAMES)
"""``LlamaForCausalLM`` name (regex) -> hub parameter name (export)."""

_REQUIRED = {  # hub config field -> the only value the native class reproduces
    "block_type": ("llama",),
    "activation_type": ("silu", "swiglu"),
    "layer_norm_type": ("rms",),
    "rope": (True,),
    "alibi": (False, None),
    "include_bias": (False, None),
    "include_qkv_bias": (False, None),
    "attention_layer_norm": (False, None),
    "input_emb_norm": (False, None),
    "scale_logits": (False, None),
    "multi_query_attention": (False, None),
    "clip_qkv": (None,),
}


def llada_config(hub: dict[str, Any], where: str = "config.json") -> Any:
    """The ``LlamaConfig`` of a LLaDA ``config.json`` (bidirectional, no KV cache).

    Mapped: ``d_model`` -> ``hidden_size``, ``n_heads``, ``n_kv_heads`` (default ``n_heads``),
    ``n_layers``, ``mlp_hidden_size`` (default ``mlp_ratio × d_model``) -> ``intermediate_size``,
    ``embedding_size`` (default ``vocab_size``) -> ``vocab_size``, ``max_sequence_length``,
    ``rope_theta``, ``rms_norm_eps``, ``weight_tying`` -> ``tie_word_embeddings``, and the
    special ids (``mask_token_id`` kept as a config attribute).

    Raises:
        ValueError: a field the Llama class cannot reproduce (names the field and value).
    """
    from transformers import LlamaConfig

    for key, allowed in _REQUIRED.items():
        if key in hub and hub[key] not in allowed:
            raise ValueError(
                f"{where}: {key} = {hub[key]!r} is not supported by the native llada backend "
                f"(needs one of {list(allowed)}); try backend llada-remote"
            )
    for key in ("d_model", "n_heads", "n_layers"):
        if key not in hub:
            raise ValueError(f"{where}: no {key!r}; not a LLaDA config (try backend llada-remote)")
    d_model, n_heads = int(hub["d_model"]), int(hub["n_heads"])
    hidden = hub.get("mlp_hidden_size") or int(hub.get("mlp_ratio", 4)) * d_model
    return LlamaConfig(
        vocab_size=int(hub.get("embedding_size") or hub["vocab_size"]),
        hidden_size=d_model,
        intermediate_size=int(hidden),
        num_hidden_layers=int(hub["n_layers"]),
        num_attention_heads=n_heads,
        num_key_value_heads=int(hub.get("n_kv_heads") or n_heads),
        max_position_embeddings=int(hub.get("max_sequence_length", 4096)),
        rms_norm_eps=float(hub.get("rms_norm_eps", 1e-5)),
        rope_theta=float(hub.get("rope_theta", 10000.0)),
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        tie_word_embeddings=bool(hub.get("weight_tying", False)),
        is_causal=False,
        use_cache=False,
        pad_token_id=hub.get("pad_token_id"),
        eos_token_id=hub.get("eos_token_id"),
        bos_token_id=hub.get("bos_token_id"),
        mask_token_id=hub.get("mask_token_id"),
    )


def _llada_tokenizer(folder: Path) -> Any:
    return load_tokenizer(folder)  # a plain tokenizer.json (PreTrainedTokenizerFast)


LLADA_NATIVE = NativeFamily(
    name="llada",
    native_model_type="llama",
    build_config=llada_config,
    to_native=LLADA_TO_NATIVE,
    to_hub=LLADA_TO_HUB,
    model_class="LlamaForCausalLM",
    load_tokenizer=_llada_tokenizer,
)
"""How a LLaDA hub checkpoint becomes a ``LlamaForCausalLM`` and back."""


def load_llada(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> DiffusionLM:
    """Load a LLaDA checkpoint natively (hub id or local folder; no remote code).

    Args:
        name_or_path: e.g. ``GSAI-ML/LLaDA-8B-Instruct`` or its downloaded snapshot.
        dtype: weights' dtype (``None``: bf16 on CUDA, else fp32).
        device: where to put the model (``None``: CPU).

    Raises:
        ValueError: an unsupported config or a name map that does not fit the weights.

    Example:
        >>> dlm = load_llada("GSAI-ML/LLaDA-8B-Instruct", device="cuda")  # doctest: +SKIP
    """
    return load_native(name_or_path, LLADA_NATIVE, LLADA, dtype=dtype, device=device)


__all__ = [
    "LLADA",
    "LLADA_MASK_TOKEN_ID",
    "LLADA_NATIVE",
    "LLADA_REMOTE",
    "LLADA_TO_HUB",
    "LLADA_TO_NATIVE",
    "llada_config",
    "load_llada",
]
