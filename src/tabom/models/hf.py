"""Loading Hugging Face checkpoints as diffusion LMs; the ``hf-mlm`` backend (DESIGN §2).

A :class:`BackendDefaults` (static data per model family: remote code or not, model class,
logit shift, attention kind, chat template, where the mask id lives, stop tokens, LoRA
targets) is resolved against a checkpoint's config and tokenizer into a
:class:`~tabom.models.base.BackendSpec`. ``llada.py`` and ``dream.py`` hold their families'
data (loaded natively by ``native.py``); :func:`load_pretrained` here serves ``hf-mlm`` (any
``AutoModelForMaskedLM``: BERT, RoBERTa, ModernBERT; bidirectional, unshifted, 2-D mask) and
the remote-code backends ``llada-remote`` / ``dream-remote``, with the dtype keyword of the
installed transformers and a clear error when remote code fails to import.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from tabom.models.base import AttentionKind, BackendSpec, DiffusionLM

ModelClass = Literal["auto", "causal-lm", "masked-lm"]


@dataclass(frozen=True)
class BackendDefaults:
    """What a model family is, as data; resolved per checkpoint by :func:`resolve_spec`.

    Attributes:
        name: backend name (``llada``, ``dream``, ``hf-mlm``).
        model_types: ``config.model_type`` values of this family's own (remote-code) models;
            they are bidirectional by construction. Other model types load only when their
            config says ``is_causal: false`` (the offline stand-ins) or are masked LMs.
        trust_remote_code: load config, tokenizer and model with ``trust_remote_code=True``.
        model_class: ``auto``: ``AutoModel`` when the config maps it to remote code (LLaDA's
            ``LLaDAModelLM``, Dream's ``DreamModel`` carry their LM head), a masked-LM class
            for ``*ForMaskedLM`` architectures, else ``AutoModelForCausalLM``; or forced.
        shift_logits: the network predicts token j at position j-1 (Dream).
        attention: how the padding mask reaches the network (:class:`BackendSpec`).
        chat_template: apply the tokenizer's chat template to prompts when it has one.
        prompt_special_tokens: without a template, tokenise prompts with special tokens.
        mask_sources: where the mask id is looked up, first hit wins: ``config:ATTR`` (a
            config attribute), ``tokenizer`` (``tokenizer.mask_token_id``), ``token:TEXT`` (a
            token of the vocabulary).
        eos_sources: the same for the EOS id (``tokenizer:eos``, ``tokenizer:sep``,
            ``config:eos_token_id``, ``token:TEXT``).
        stop_tokens: tokens besides EOS that end an answer (kept when in the vocabulary).
        lora_targets: default LoRA target modules.
        lora_targets_by_model_type: overrides of ``lora_targets`` per ``config.model_type``.
    """

    name: str
    model_types: tuple[str, ...] = ()
    trust_remote_code: bool = False
    model_class: ModelClass = "auto"
    shift_logits: bool = False
    attention: AttentionKind = "2d"
    chat_template: bool = True
    prompt_special_tokens: bool = False
    mask_sources: tuple[str, ...] = ("tokenizer",)
    eos_sources: tuple[str, ...] = ("tokenizer:eos", "config:eos_token_id")
    stop_tokens: tuple[str, ...] = ()
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    lora_targets_by_model_type: tuple[tuple[str, tuple[str, ...]], ...] = ()


HF_MLM = BackendDefaults(
    name="hf-mlm",
    model_class="masked-lm",
    chat_template=True,  # only when the tokenizer has one (BERT's has none)
    prompt_special_tokens=True,  # [CLS] prompt [SEP], then the response
    mask_sources=("tokenizer",),
    eos_sources=("tokenizer:eos", "tokenizer:sep", "config:eos_token_id"),
    lora_targets=("query", "value"),  # BERT, RoBERTa, ELECTRA
    lora_targets_by_model_type=(
        ("modernbert", ("Wqkv",)),
        ("distilbert", ("q_lin", "v_lin")),
    ),
)
"""``hf-mlm``: any ``AutoModelForMaskedLM``; the mask is the tokenizer's ``[MASK]``."""


# --------------------------------------------------------------------------- resolution


def torch_dtype(dtype: str | torch.dtype | None, device: torch.device | str | None) -> torch.dtype:
    """The weights' dtype: ``auto``/``None`` is bf16 on a CUDA device that has it, else fp32.

    Args:
        dtype: ``auto``, ``bf16``/``bfloat16``, ``fp16``/``float16``, ``fp32``/``float32``,
            a ``torch.dtype``, or ``None`` (= ``auto``).
        device: where the model will run.

    Raises:
        ValueError: an unknown name.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    if dtype is None or dtype == "auto":
        cuda = device is not None and torch.device(device).type == "cuda"
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    if dtype not in names:
        raise ValueError(f"dtype must be auto or one of {', '.join(names)}, got {dtype!r}")
    return names[dtype]


def _first_id(sources: tuple[str, ...], config: Any, tok: Any, vocab: dict[str, int]) -> int | None:
    """The first id that ``sources`` yields (see :class:`BackendDefaults`), or ``None``."""
    for source in sources:
        kind, _, arg = source.partition(":")
        value: Any = None
        if kind == "config":
            value = getattr(config, arg, None)
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
        elif kind == "tokenizer":
            name = {"": "mask", "eos": "eos", "sep": "sep"}[arg]
            if getattr(tok, f"{name}_token", None) is not None:
                value = getattr(tok, f"{name}_token_id")
        elif kind == "token":
            value = vocab.get(arg)
        else:
            raise ValueError(f"unknown id source {source!r}")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def check_bidirectional(config: Any, defaults: BackendDefaults, where: str) -> None:
    """Refuse a checkpoint that is not a bidirectional (masked) model.

    A family's own model types pass; masked LMs pass unless their config says ``is_decoder``;
    anything else needs ``is_causal: false`` in its config (a causal LM would decode and train
    without error, and without seeing the future: silently wrong).

    Raises:
        ValueError: names the checkpoint, its model type and what would make it load.
    """
    model_type = getattr(config, "model_type", None)
    if model_type in defaults.model_types:
        return
    if defaults.model_class == "masked-lm" or _is_masked_lm(config):
        if getattr(config, "is_decoder", False):
            raise ValueError(
                f"{where}: config.is_decoder is true (causal attention); a diffusion LM "
                "needs bidirectional attention"
            )
        return
    if getattr(config, "is_causal", True) is not False:
        known = ", ".join(defaults.model_types) or "a masked LM"
        raise ValueError(
            f"{where}: model_type {model_type!r} is a causal LM (its config has no "
            f"'is_causal: false'); the {defaults.name} backend needs a bidirectional model "
            f"({known}, or a transformers config with is_causal false)"
        )


def _is_masked_lm(config: Any) -> bool:
    return any(str(a).endswith("ForMaskedLM") for a in getattr(config, "architectures", None) or ())


def model_class(config: Any, defaults: BackendDefaults) -> Any:
    """The ``transformers`` auto class that loads this checkpoint with its LM head."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    kind = defaults.model_class
    if kind == "auto":
        auto_map = getattr(config, "auto_map", None) or {}
        if defaults.trust_remote_code and "AutoModel" in auto_map:
            return AutoModel
        kind = "masked-lm" if _is_masked_lm(config) else "causal-lm"
    return AutoModelForMaskedLM if kind == "masked-lm" else AutoModelForCausalLM


def resolve_spec(
    defaults: BackendDefaults, config: Any, tokenizer: Any, model: Any, where: str
) -> BackendSpec:
    """A checkpoint's :class:`BackendSpec`: ids from its config and tokenizer, the rest data.

    Raises:
        ValueError: no mask token or no EOS/pad token; names the checkpoint.
    """
    vocab = tokenizer.get_vocab()
    mask = _first_id(defaults.mask_sources, config, tokenizer, vocab)
    if mask is None:
        raise ValueError(
            f"{where}: no mask token (looked in {', '.join(defaults.mask_sources)}); the "
            f"{defaults.name} backend needs one to decode and train"
        )
    eos = _first_id(defaults.eos_sources, config, tokenizer, vocab)
    if eos is None:
        raise ValueError(
            f"{where}: no EOS token (looked in {', '.join(defaults.eos_sources)}); the "
            "decoder fills the unused tail with it"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    stops = tuple(vocab[t] for t in defaults.stop_tokens if t in vocab and vocab[t] != eos)
    model_type = getattr(config, "model_type", None)
    targets = dict(defaults.lora_targets_by_model_type).get(model_type, defaults.lora_targets)
    forward = getattr(model, "forward", None)
    takes_positions = (
        forward is not None and "position_ids" in inspect.signature(forward).parameters
    )
    return BackendSpec(
        name=defaults.name,
        mask_token_id=mask,
        shift_logits=defaults.shift_logits,
        eos_token_id=eos,
        pad_token_id=pad,
        lora_targets=tuple(targets),
        attention=defaults.attention,
        position_ids=takes_positions,
        chat_template=defaults.chat_template
        and getattr(tokenizer, "chat_template", None) is not None,
        prompt_special_tokens=defaults.prompt_special_tokens,
        stop_token_ids=stops,
    )


# --------------------------------------------------------------------------- loading


def load_tokenizer(name_or_path: str | Path, *, trust_remote_code: bool = False) -> Any:
    """A checkpoint's tokenizer, of the class its ``tokenizer_config.json`` declares.

    ``AutoTokenizer`` replaces a declared generic fast tokenizer by the class registered for
    some model types (a ``qwen2`` config gets ``Qwen2Tokenizer``, which rebuilds the
    pre-tokenizer and drops the character tokenizer's spaces); a checkpoint that declares
    ``TokenizersBackend`` / ``PreTrainedTokenizerFast`` and ships no tokenizer code is
    therefore loaded as exactly its ``tokenizer.json``. Everything else (LLaDA's, Dream's
    remote tokenizer) goes through ``AutoTokenizer``. Padding side: left.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    declared = get_tokenizer_config(name_or_path)
    generic = declared.get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast")
    if generic and "auto_map" not in declared:
        tok = PreTrainedTokenizerFast.from_pretrained(name_or_path)
    else:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    tok.padding_side = "left"
    return tok


REMOTE_CODE_TRANSFORMERS = ">=4.56,<5"
"""The transformers range the LLaDA / Dream remote modeling files load under (4.57.6 tested)."""


def dtype_keyword() -> str:
    """``from_pretrained``'s dtype keyword for the installed transformers (``dtype`` from
    4.56, ``torch_dtype`` before)."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


@contextmanager
def _remote_code_errors(where: str, defaults: BackendDefaults, trust: bool) -> Iterator[None]:
    """Re-raise a remote modeling file's failure under this transformers with the range it needs.

    Raises:
        RuntimeError: names the checkpoint, the installed and the working transformers range,
            and the native backend (for LLaDA / Dream).
    """
    if not trust:
        yield
        return
    try:
        yield
    except (ImportError, AttributeError, KeyError, TypeError, NameError) as e:
        import transformers

        native = defaults.name.removesuffix("-remote")
        raise RuntimeError(
            f"{where}: its remote modeling code (trust_remote_code) failed under transformers "
            f"{transformers.__version__}: {type(e).__name__}: {e}. The LLaDA / Dream remote files "
            f"work with transformers{REMOTE_CODE_TRANSFORMERS} (pip install "
            f"'transformers{REMOTE_CODE_TRANSFORMERS}'); or use backend {native!r}, which loads "
            "the checkpoint natively without remote code"
        ) from e


def tolerant_generation_config(model: Any) -> None:
    """Let a remote generation config whose ``validate`` takes no ``strict`` be saved.

    Dream's ``DreamGenerationConfig.validate(self, is_init=False)`` predates the ``strict``
    keyword that ``save_pretrained`` passes (transformers 4.57 and later: a ``TypeError`` after
    the folder was created). The instance gets a ``validate`` that drops unknown keywords.
    """
    gen = getattr(model, "generation_config", None)
    if gen is None:
        return
    params = inspect.signature(type(gen).validate).parameters
    if "strict" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    cls = type(gen)

    def validate(self: Any, *args: Any, **kwargs: Any) -> Any:
        return cls.validate(self, *args, **{k: v for k, v in kwargs.items() if k in params})

    # a subclass, not an instance attribute: ``to_dict`` serialises the instance's __dict__
    gen.__class__ = type(cls.__name__, (cls,), {"validate": validate})


def load_pretrained(
    name_or_path: str | Path,
    defaults: BackendDefaults,
    *,
    dtype: str | torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> DiffusionLM:
    """Load a checkpoint (hub id or local folder) of a pretrained backend.

    Args:
        name_or_path: e.g. ``GSAI-ML/LLaDA-8B-Instruct`` or a local folder.
        defaults: the family's data (:data:`HF_MLM`, ``llada.LLADA``, ``dream.DREAM``).
        dtype: weights' dtype (:func:`torch_dtype`; ``None``: bf16 on CUDA, else fp32).
        device: where to put the model (``None``: CPU).

    Returns:
        The model in eval mode, its tokenizer (left padding) and its resolved spec.

    Raises:
        ValueError: not bidirectional, no mask token, or not loadable with this backend's
            model class; names the checkpoint.
    """
    from transformers import AutoConfig

    where = str(name_or_path)
    trust = defaults.trust_remote_code
    with _remote_code_errors(where, defaults, trust):
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust)
    check_bidirectional(config, defaults, where)
    tok = load_tokenizer(name_or_path, trust_remote_code=trust)
    cls = model_class(config, defaults)
    try:
        with _remote_code_errors(where, defaults, trust):
            model = cls.from_pretrained(
                name_or_path,
                config=config,
                trust_remote_code=trust,
                **{dtype_keyword(): torch_dtype(dtype, device)},
            )
    except ValueError as e:
        if "Unrecognized configuration class" not in str(e):
            raise
        raise ValueError(
            f"{where}: model_type {config.model_type!r} cannot be loaded as "
            f"{cls.__name__} by the {defaults.name} backend ({e})"
        ) from None
    if device is not None:
        model.to(device)
    model.eval()
    spec = resolve_spec(defaults, config, tok, model, where)
    return DiffusionLM(model=model, tokenizer=tok, spec=spec)


def load_hf_mlm(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> DiffusionLM:
    """Load any ``AutoModelForMaskedLM`` checkpoint (BERT, RoBERTa, ModernBERT) as a DLM.

    Example:
        >>> dlm = load_hf_mlm("answerdotai/ModernBERT-base")  # doctest: +SKIP
    """
    return load_pretrained(name_or_path, HF_MLM, dtype=dtype, device=device)


__all__ = [
    "HF_MLM",
    "REMOTE_CODE_TRANSFORMERS",
    "BackendDefaults",
    "check_bidirectional",
    "dtype_keyword",
    "load_hf_mlm",
    "load_pretrained",
    "load_tokenizer",
    "model_class",
    "resolve_spec",
    "tolerant_generation_config",
    "torch_dtype",
]
