"""The ``dream`` backend: Dream (Dream-org/Dream-v0-Instruct-7B, -Base) as data (DESIGN §2).

Dream-7B is a Qwen2.5 (GQA, q/k/v biases, untied head, ``rope_theta`` 1e6) with bidirectional
attention and logits shifted by one, under Qwen2's own parameter names. The default (native)
path builds ``Qwen2ForCausalLM`` with ``is_causal=False`` from the checkpoint's ``config.json``
(:func:`dream_config`); the name map is the identity. The tokenizer is a Qwen2 byte-level BPE
(``vocab.json``, ``merges.txt``, ``added_tokens.json``) built as ``Qwen2Tokenizer``, never
through the checkpoint's ``tokenization_dream.py``. What differs from the other backends:

- mask id: the tokenizer's ``<|mask|>`` (151666);
- logits: shifted by one position (token j is predicted at j-1);
  :class:`~tabom.models.base.DiffusionLM` realigns them;
- padding: a 4-D ``(B, 1, L, L)`` mask in which every query sees the real tokens and a pad
  query itself (never an all-masked row: NaN), all true when unpadded, and position ids
  ``cumsum(mask) - 1``; the remote path passes none when unpadded (Dream's own ``"full"``);
- chat template: Qwen2.5's; answers end with ``<|im_end|>`` then ``<|endoftext|>`` (EOS, pad);
- LoRA targets: ``q_proj``, ``v_proj``.

``dream-remote`` keeps the remote-code path (``trust_remote_code=True``) as an explicit choice.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from tabom.models.base import DiffusionLM
from tabom.models.hf import BackendDefaults, load_tokenizer
from tabom.models.native import NativeFamily, load_native

DREAM = BackendDefaults(
    name="dream",
    model_types=("Dream", "dream"),
    trust_remote_code=False,
    model_class="causal-lm",
    shift_logits=True,
    attention="4d",
    chat_template=True,
    prompt_special_tokens=False,
    mask_sources=("tokenizer", "token:<|mask|>", "config:mask_token_id"),
    eos_sources=("tokenizer:eos", "config:eos_token_id"),
    stop_tokens=("<|im_end|>",),
    lora_targets=("q_proj", "v_proj"),
)
"""``dream``: the data that makes Dream a backend (native Qwen2 class)."""

DREAM_REMOTE = dataclasses.replace(
    DREAM, name="dream-remote", trust_remote_code=True, model_class="auto", attention="4d-self-pad"
)
"""``dream-remote``: the checkpoint's own modeling file (``trust_remote_code=True``)."""

DREAM_MASK_TOKEN_ID = 151666
"""Dream-7B's ``<|mask|>``, for reference and tests."""

DREAM_TO_NATIVE: tuple[tuple[str, str], ...] = ()
"""Dream's hub names are Qwen2's: the identity (no pairs)."""
DREAM_TO_HUB = DREAM_TO_NATIVE

_COPIED = (  # Dream config fields that are Qwen2Config fields of the same meaning
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "hidden_act",
    "attention_dropout",
    "initializer_range",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "mask_token_id",
)


def dream_config(hub: dict[str, Any], where: str = "config.json") -> Any:
    """The ``Qwen2Config`` of a Dream ``config.json`` (bidirectional, no KV cache).

    Raises:
        ValueError: sliding-window attention or RoPE scaling (names the field).
    """
    from transformers import Qwen2Config

    if hub.get("use_sliding_window"):
        raise ValueError(f"{where}: use_sliding_window true is not supported by the dream backend")
    if hub.get("rope_scaling"):
        raise ValueError(
            f"{where}: rope_scaling {hub['rope_scaling']!r} is not supported by the dream backend"
        )
    fields = {k: hub[k] for k in _COPIED if k in hub}
    return Qwen2Config(**fields, use_sliding_window=False, is_causal=False, use_cache=False)


def _dream_tokenizer(folder: Path) -> Any:
    """Dream's tokenizer without ``tokenization_dream.py``: a ``Qwen2Tokenizer`` over its files."""
    from transformers import Qwen2Tokenizer

    declared = {}
    if (folder / "tokenizer_config.json").is_file():
        declared = json.loads((folder / "tokenizer_config.json").read_text())
    if declared.get("tokenizer_class") != "DreamTokenizer":
        return load_tokenizer(folder)  # saved by tabom (Qwen2Tokenizer) or a stand-in
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "DreamTokenizer is not Qwen2Tokenizer": on purpose
    try:
        tok = Qwen2Tokenizer.from_pretrained(folder)
    finally:
        hf_logging.set_verbosity(verbosity)
    tok.init_kwargs.pop("auto_map", None)  # a save must not point back at the remote class
    return tok


DREAM_NATIVE = NativeFamily(
    name="dream",
    native_model_type="qwen2",
    build_config=dream_config,
    to_native=DREAM_TO_NATIVE,
    to_hub=DREAM_TO_HUB,
    model_class="Qwen2ForCausalLM",
    load_tokenizer=_dream_tokenizer,
)
"""How a Dream hub checkpoint becomes a ``Qwen2ForCausalLM`` and back."""


def load_dream(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> DiffusionLM:
    """Load a Dream checkpoint natively (hub id or local folder; no remote code).

    Args:
        name_or_path: e.g. ``Dream-org/Dream-v0-Instruct-7B`` or its downloaded snapshot.
        dtype: weights' dtype (``None``: bf16 on CUDA, else fp32).
        device: where to put the model (``None``: CPU).

    Raises:
        ValueError: an unsupported config or weights that do not fit the Qwen2 names.

    Example:
        >>> dlm = load_dream("Dream-org/Dream-v0-Instruct-7B", device="cuda")  # doctest: +SKIP
    """
    return load_native(name_or_path, DREAM_NATIVE, DREAM, dtype=dtype, device=device)


__all__ = [
    "DREAM",
    "DREAM_MASK_TOKEN_ID",
    "DREAM_NATIVE",
    "DREAM_REMOTE",
    "dream_config",
    "load_dream",
]
