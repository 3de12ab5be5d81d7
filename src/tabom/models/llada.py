"""The ``llada`` backend: LLaDA (e.g. GSAI-ML/LLaDA-8B-Instruct) as data (DESIGN §2).

LLaDA is a bidirectional Llama-like transformer loaded with ``AutoModel(...,
trust_remote_code=True)`` (its ``LLaDAModelLM`` carries the LM head). What differs from the
other backends:

- mask id: ``config.mask_token_id`` (126336, the token ``<|mdm_mask|>``), else the
  tokenizer's; the tokenizer declares no mask token of its own;
- logits: not shifted;
- padding: its released forward takes no position ids and ignores ``attention_mask`` (the
  attention call hard-codes ``attn_mask=None``), so in a left-padded batch every position sees
  the pad tokens (EOS, as LLaDA's own ``generate.py`` does); a row decodes exactly as alone
  only with batch size 1. The mask is passed anyway (2-D), for checkpoints that honour it;
- chat template: Llama-3 style, and it appends the assistant header whatever
  ``add_generation_prompt`` says; answers end with ``<|eot_id|>`` then ``<|endoftext|>`` (EOS);
- LoRA targets: ``q_proj``, ``v_proj`` (LLaDA's blocks name their projections so).

Offline, ``tabom.models.standin`` builds a bidirectional Llama-family model saved with this
backend, which exercises every line here except the remote code itself.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tabom.models.base import DiffusionLM
from tabom.models.hf import BackendDefaults, load_pretrained

LLADA = BackendDefaults(
    name="llada",
    model_types=("llada",),
    trust_remote_code=True,
    model_class="auto",
    shift_logits=False,
    attention="2d",
    chat_template=True,
    prompt_special_tokens=False,
    mask_sources=("config:mask_token_id", "tokenizer", "token:<|mdm_mask|>"),
    eos_sources=("tokenizer:eos", "config:eos_token_id"),
    stop_tokens=("<|eot_id|>",),
    lora_targets=("q_proj", "v_proj"),
)
"""``llada``: the data that makes LLaDA a backend."""

LLADA_MASK_TOKEN_ID = 126336
"""LLaDA-8B's ``<|mdm_mask|>`` (``config.mask_token_id``), for reference and tests."""


def load_llada(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> DiffusionLM:
    """Load a LLaDA checkpoint (hub id or local folder; remote code trusted).

    Args:
        name_or_path: e.g. ``GSAI-ML/LLaDA-8B-Instruct``.
        dtype: weights' dtype (``None``: bf16 on CUDA, else fp32).
        device: where to put the model (``None``: CPU).

    Raises:
        ValueError: the checkpoint is not bidirectional or has no mask token.

    Example:
        >>> dlm = load_llada("GSAI-ML/LLaDA-8B-Instruct", device="cuda")  # doctest: +SKIP
    """
    return load_pretrained(name_or_path, LLADA, dtype=dtype, device=device)


__all__ = ["LLADA", "LLADA_MASK_TOKEN_ID", "load_llada"]
