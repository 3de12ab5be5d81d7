"""The ``dream`` backend: Dream (e.g. Dream-org/Dream-v0-Instruct-7B) as data (DESIGN §2).

Dream is a Qwen2.5-based bidirectional transformer loaded with ``AutoModel(...,
trust_remote_code=True)`` (its ``DreamModel`` carries the LM head). What differs:

- mask id: the tokenizer's ``<|mask|>`` (151666);
- logits: shifted by one position (Dream predicts token j at position j-1, kept from its
  autoregressive initialisation); :class:`~tabom.models.base.DiffusionLM` realigns them;
- padding: a 2-D mask is not understood by its attention; with left padding it gets a 4-D
  ``(B, 1, L, L)`` mask in which every query attends to the real tokens and a pad query to
  itself only (Dream's own ``generate`` blocks pad queries entirely, an all-masked row that
  SDPA turns into NaN), and position ids ``cumsum(mask) - 1``; without padding, no mask;
- chat template: Qwen2.5's (``<|im_start|>user ... <|im_end|>``, a default system turn);
  answers end with ``<|im_end|>`` then ``<|endoftext|>`` (EOS and pad);
- LoRA targets: ``q_proj``, ``v_proj``.

Offline, ``tabom.models.standin`` builds a bidirectional Qwen2-family model saved with this
backend (shifted logits, 4-D mask), which exercises every line here except the remote code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tabom.models.base import DiffusionLM
from tabom.models.hf import BackendDefaults, load_pretrained

DREAM = BackendDefaults(
    name="dream",
    model_types=("Dream", "dream"),
    trust_remote_code=True,
    model_class="auto",
    shift_logits=True,
    attention="4d-self-pad",
    chat_template=True,
    prompt_special_tokens=False,
    mask_sources=("tokenizer", "token:<|mask|>", "config:mask_token_id"),
    eos_sources=("tokenizer:eos", "config:eos_token_id"),
    stop_tokens=("<|im_end|>",),
    lora_targets=("q_proj", "v_proj"),
)
"""``dream``: the data that makes Dream a backend."""

DREAM_MASK_TOKEN_ID = 151666
"""Dream-7B's ``<|mask|>``, for reference and tests."""


def load_dream(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> DiffusionLM:
    """Load a Dream checkpoint (hub id or local folder; remote code trusted).

    Args:
        name_or_path: e.g. ``Dream-org/Dream-v0-Instruct-7B``.
        dtype: weights' dtype (``None``: bf16 on CUDA, else fp32).
        device: where to put the model (``None``: CPU).

    Raises:
        ValueError: the checkpoint is not bidirectional or has no mask token.

    Example:
        >>> dlm = load_dream("Dream-org/Dream-v0-Instruct-7B", device="cuda")  # doctest: +SKIP
    """
    return load_pretrained(name_or_path, DREAM, dtype=dtype, device=device)


__all__ = ["DREAM", "DREAM_MASK_TOKEN_ID", "load_dream"]
