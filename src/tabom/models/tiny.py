"""The embedded default: a tiny bidirectional DLM built from a transformers config (DESIGN §2).

``tiny`` is a Llama-family model with ``is_causal=False`` (LLaDA-like, unshifted logits);
``tiny-dream`` is a Qwen2-family model whose logits are shifted by one position like Dream's,
so that the realignment path is exercised on this machine. The tokenizer is character level
(printable ASCII and newline) with ``<pad>``, ``<eos>``, ``<mask>`` and ``<unk>``; it saves with
``save_pretrained`` and loads with ``AutoTokenizer.from_pretrained`` from a local folder.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from tabom.config import AT_LEAST_1, check_ranges
from tabom.models.base import (
    BACKEND_FILE,
    BackendSpec,
    DiffusionLM,
    make_bidirectional,
    write_model_files,
)

SPECIAL_TOKENS = ("<pad>", "<eos>", "<mask>", "<unk>")
CHARS = tuple(chr(i) for i in range(32, 127)) + ("\n",)


def build_char_tokenizer():
    """A character-level ``PreTrainedTokenizerFast``: one id per printable ASCII char.

    Ids: ``<pad>`` 0, ``<eos>`` 1, ``<mask>`` 2, ``<unk>`` 3, then space .. ``~`` and newline.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)[\\s\\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        mask_token="<mask>",
        unk_token="<unk>",
        padding_side="left",
    )
    tok.model_input_names = ["input_ids", "attention_mask"]
    return tok


@dataclass
class TinyModelConfig:
    """Shape of the tiny model.

    Attributes:
        family: ``llama`` (LLaDA-like, backend ``tiny``) or ``qwen2`` (Dream-like shifted
            logits, backend ``tiny-dream``).
        hidden_size: model width.
        num_layers: transformer blocks.
        num_heads: attention heads.
        intermediate_size: MLP width.
        max_length: longest prompt + response the model sees (rotary positions).
    """

    family: Literal["llama", "qwen2"] = "llama"
    hidden_size: int = field(default=128, metadata=AT_LEAST_1)
    num_layers: int = field(default=4, metadata=AT_LEAST_1)
    num_heads: int = field(default=4, metadata=AT_LEAST_1)
    intermediate_size: int = field(default=384, metadata=AT_LEAST_1)
    max_length: int = field(default=128, metadata=AT_LEAST_1)

    def __post_init__(self) -> None:
        check_ranges(self)  # a config built in Python; flags and YAML are checked before
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.num_heads ({self.num_heads})"
            )


def tiny_spec(tokenizer, family: str) -> BackendSpec:
    """Backend data for a tiny model: Qwen2-family shifts like Dream, Llama-family does not."""
    return BackendSpec(
        name="tiny-dream" if family == "qwen2" else "tiny",
        mask_token_id=tokenizer.mask_token_id,
        shift_logits=family == "qwen2",
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention="4d",  # a mask every transformers version uses as is
    )


def build_tiny(cfg: TinyModelConfig | None = None, *, seed: int = 0) -> DiffusionLM:
    """A randomly initialised tiny DLM (weights drawn from ``seed``).

    Returns:
        A :class:`DiffusionLM` whose model is bidirectional (``config.is_causal = False``).
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cfg = cfg or TinyModelConfig()
    tok = build_char_tokenizer()
    config_cls, model_cls = (
        (LlamaConfig, LlamaForCausalLM)
        if cfg.family == "llama"
        else (Qwen2Config, Qwen2ForCausalLM)
    )
    hf_config = config_cls(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_length,
        is_causal=False,
        use_cache=False,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_bidirectional(model_cls(hf_config))
    model.eval()
    dlm = DiffusionLM(model=model, tokenizer=tok, spec=tiny_spec(tok, cfg.family))
    dlm.extra["tiny_config"] = asdict(cfg)
    return dlm


save_tiny = write_model_files
"""Tiny models are written like every backend (:func:`tabom.models.base.write_model_files`;
:func:`tabom.models.save_model` is the atomic save)."""


@contextlib.contextmanager
def quiet_hf_bars(quiet: bool = True) -> Iterator[None]:
    """transformers' own progress bars (``Loading weights``, ``Writing model shards``) off
    inside the block, as they were after it."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if quiet and was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_on:
            hf_logging.enable_progress_bar()


def load_tiny(path: str | Path, *, dtype: torch.dtype | None = None) -> DiffusionLM:
    """Load a tiny model saved by :func:`save_tiny` (or by ``tabom pretrain``).

    Raises:
        ValueError: the checkpoint is not bidirectional or its tokenizer has no mask token.
    """
    from transformers import AutoModelForCausalLM

    from tabom.models.hf import load_tokenizer

    path = Path(path)
    tok = load_tokenizer(path)
    with quiet_hf_bars():  # a per-tensor bar for a few MB is noise
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    model.eval()
    if getattr(model.config, "is_causal", True):
        raise ValueError(f"{path}/config.json: is_causal must be false for a diffusion LM")
    make_bidirectional(model)
    if tok.mask_token_id is None:
        raise ValueError(f"{path}: the tokenizer defines no mask token")
    family = "qwen2" if model.config.model_type == "qwen2" else "llama"
    dlm = DiffusionLM(model=model, tokenizer=tok, spec=tiny_spec(tok, family))
    meta_file = path / BACKEND_FILE
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        if "tiny_config" in meta:
            dlm.extra["tiny_config"] = meta["tiny_config"]
    return dlm
