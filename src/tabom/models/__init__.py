"""Model loading: one entry point, backends as data (DESIGN §2).

:func:`load_model` takes a shipped name (``tiny-base``), a local folder or a hub id and picks
the backend: a shipped name or a folder with ``tabom_backend.json`` says it itself; otherwise
the checkpoint's ``config.json`` does (``model_type`` ``llada`` -> ``llada``, ``Dream`` ->
``dream``, a ``*ForMaskedLM`` architecture -> ``hf-mlm``). ``llada`` and ``dream`` load
natively (transformers' Llama / Qwen2 classes, ``models/native.py``); ``llada-remote`` and
``dream-remote`` run the checkpoint's own code. :func:`save_model` writes any backend's model
atomically so that :func:`load_model` restores it; :func:`export_model` writes a native LLaDA /
Dream back in its hub layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tabom.errors import TabomError
from tabom.models.base import (
    BACKEND_FILE,
    BackendSpec,
    DiffusionLM,
    align_logits,
    enable_gradient_checkpointing,
    write_model_files,
)
from tabom.models.dream import DREAM, DREAM_NATIVE, DREAM_REMOTE, load_dream
from tabom.models.hf import (
    HF_MLM,
    BackendDefaults,
    load_hf_mlm,
    load_pretrained,
    tolerant_generation_config,
    torch_dtype,
)
from tabom.models.llada import LLADA, LLADA_NATIVE, LLADA_REMOTE, load_llada
from tabom.models.native import NativeFamily, atomic_dir, export_hub, load_native, save_native_files
from tabom.models.tiny import (
    TinyModelConfig,
    build_tiny,
    load_tiny,
    quiet_hf_bars,
    save_tiny,
)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHIPPED = {
    "tiny-base": ASSETS / "tiny-base",
    "tiny-sudoku": ASSETS / "tiny-sudoku",
    "tiny-longadd": ASSETS / "tiny-longadd",
    "tiny-longadd-v1": ASSETS / "tiny-longadd-v1",  # the first long-addition base (issue 19)
}
DEFAULT_MODEL = "tiny-base"
TINY_BACKENDS = ("tiny", "tiny-dream")
PRETRAINED: dict[str, BackendDefaults] = {
    "llada": LLADA,
    "dream": DREAM,
    "llada-remote": LLADA_REMOTE,
    "dream-remote": DREAM_REMOTE,
    "hf-mlm": HF_MLM,
}
"""Backend name -> its family data, for checkpoints loaded through ``transformers``."""
NATIVE: dict[str, NativeFamily] = {"llada": LLADA_NATIVE, "dream": DREAM_NATIVE}
"""Backends loaded natively (no remote code): name -> config and name maps."""
SCRIPTED = "scripted"
"""A stand-in with answers known in advance, for end-to-end tests (``models/scripted.py``)."""
BACKENDS = (*TINY_BACKENDS, *PRETRAINED, SCRIPTED)
SMALL_MODEL = 100_000_000
"""Parameters below which saving shows no ``Writing model shards`` bar."""
REMOTE = ("llada-remote", "dream-remote")
"""Backends that run a checkpoint's own code: only when the caller names them (or passes
``trust_remote_code``), never because a file in the model folder says so."""

__all__ = [
    "BACKENDS",
    "DREAM",
    "HF_MLM",
    "LLADA",
    "BackendDefaults",
    "BackendSpec",
    "DiffusionLM",
    "NATIVE",
    "TinyModelConfig",
    "align_logits",
    "backend_from_config",
    "build_tiny",
    "detect_backend",
    "enable_gradient_checkpointing",
    "export_model",
    "load_dream",
    "load_hf_mlm",
    "load_llada",
    "load_model",
    "load_tiny",
    "resolve_model_path",
    "save_model",
    "save_tiny",
]


def resolve_model_path(name_or_path: str) -> Path:
    """Map a shipped model name (``tiny-base``) or a local folder to a folder.

    Raises:
        FileNotFoundError: neither a shipped name nor an existing folder.
    """
    if name_or_path in SHIPPED:
        return SHIPPED[name_or_path]
    path = Path(name_or_path)
    if path.is_dir():
        return path
    raise FileNotFoundError(
        f"model {name_or_path!r}: not a shipped model ({', '.join(SHIPPED)}) nor a local folder"
    )


def backend_from_config(config: dict[str, Any], where: str = "<config>") -> str:
    """The backend a ``config.json`` (as a dict) belongs to.

    Raises:
        ValueError: the config names no known diffusion family; says how to choose one.
    """
    model_type = config.get("model_type")
    for name, defaults in PRETRAINED.items():
        if model_type in defaults.model_types:
            return name
    archs = config.get("architectures") or []
    if any(str(a).endswith("ForMaskedLM") for a in archs):
        return "hf-mlm"
    raise TabomError(
        f"{where}: cannot tell the backend from model_type {model_type!r} and architectures "
        f"{archs}; pass backend= one of {', '.join(BACKENDS)} (a bidirectional Llama/Qwen2 "
        f"stand-in needs {BACKEND_FILE} or an explicit backend)"
    )


def detect_backend(name_or_path: str) -> str:
    """The backend ``load_model(..., backend="auto")`` uses for ``name_or_path``.

    Order: a shipped name -> ``tiny``; a folder with ``tabom_backend.json`` -> its
    ``backend``; otherwise the checkpoint's ``config.json`` (:func:`backend_from_config`),
    read from the folder or the hub (the local cache when offline).

    Raises:
        FileNotFoundError: not a shipped name, a folder or a reachable hub id.
        ValueError: a config of no known family.
    """
    if name_or_path in SHIPPED:
        return "tiny"
    path = Path(name_or_path)
    if path.is_dir() and (path / BACKEND_FILE).is_file():
        try:
            meta = json.loads((path / BACKEND_FILE).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TabomError(f"{path / BACKEND_FILE}: not valid JSON ({e})") from None
        backend = meta.get("backend") if isinstance(meta, dict) else None
        if backend not in BACKENDS:
            raise TabomError(
                f"{path / BACKEND_FILE}: backend {backend!r} is not one of {', '.join(BACKENDS)}"
            )
        return backend
    if not path.is_dir() and name_or_path.count("/") != 1:  # neither a folder nor a hub id
        resolve_model_path(name_or_path)  # raises the "not a shipped model" error
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(name_or_path)
    except OSError as e:
        raise FileNotFoundError(
            f"model {name_or_path!r}: not a shipped model ({', '.join(SHIPPED)}), not a local "
            f"folder, and its config cannot be fetched (offline, or no such hub id?): {e}"
        ) from None
    return backend_from_config(config, name_or_path)


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    backend: str = "auto",
    dtype: str | torch.dtype | None = None,
    device: torch.device | str | None = None,
    *,
    trust_remote_code: bool = False,
) -> DiffusionLM:
    """Load a diffusion LM by shipped name, local folder or hub id.

    Args:
        name_or_path: ``tiny-base``, a folder (``save_model`` / ``tabom train`` output, a
            downloaded checkpoint) or a hub id (``GSAI-ML/LLaDA-8B-Instruct``).
        backend: ``auto`` (:func:`detect_backend`) or one of :data:`BACKENDS`.
        dtype: weights' dtype: ``auto``/``None`` = bf16 on a CUDA device with bf16 for the
            pretrained backends, fp32 otherwise (the tiny backends: fp32 unless asked).
        device: where to put the model (``None``: CPU).
        trust_remote_code: run a LLaDA / Dream checkpoint's own modeling code (the
            ``llada-remote`` / ``dream-remote`` backends) instead of the native classes.
            Without it, ``auto`` refuses a folder whose ``tabom_backend.json`` names a
            remote-code backend (a file must not decide that code runs).

    Returns:
        The model in eval mode with its tokenizer and resolved :class:`BackendSpec`.

    Raises:
        FileNotFoundError: nothing to load under that name.
        TabomError: ``auto`` on a folder naming a remote-code backend without
            ``trust_remote_code``.
        ValueError: an unknown backend, a checkpoint that is not bidirectional or has no
            mask token, a native name map that does not fit the weights.
        RuntimeError: remote code that fails to import under the installed transformers.

    Example:
        >>> dlm = load_model("tiny-base")
        >>> dlm = load_model("GSAI-ML/LLaDA-8B-Instruct", device="cuda")  # doctest: +SKIP
    """
    if backend == "auto":
        backend = detect_backend(name_or_path)
        if backend in REMOTE and not trust_remote_code:  # named by a file, not by the user
            raise TabomError(
                f"model {name_or_path!r}: its {BACKEND_FILE} names backend {backend!r}, which "
                "runs the checkpoint's own Python code, so only an explicit choice runs it: "
                f"--backend {backend} (train, export), --trust_remote_code true (distill, "
                "eval), trust_remote_code=True in Python; or load it natively with backend "
                f"{backend.removesuffix('-remote')}"
            )
    if trust_remote_code and backend in NATIVE:
        backend = f"{backend}-remote"
    if backend in TINY_BACKENDS:
        tiny_dtype = None if dtype in (None, "auto") else torch_dtype(dtype, device)
        dlm = load_tiny(resolve_model_path(name_or_path), dtype=tiny_dtype)
        if device is not None:
            dlm.model.to(device)
        return dlm
    if backend == SCRIPTED:
        from tabom.models.scripted import load_scripted

        return load_scripted(resolve_model_path(name_or_path))
    if backend not in PRETRAINED:
        raise ValueError(f"backend must be auto or one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend in NATIVE:
        return load_native(
            name_or_path, NATIVE[backend], PRETRAINED[backend], dtype=dtype, device=device
        )
    return load_pretrained(name_or_path, PRETRAINED[backend], dtype=dtype, device=device)


def save_model(dlm: DiffusionLM, path: str | Path) -> None:
    """Save any backend's model, tokenizer and ``tabom_backend.json`` to a folder, atomically.

    The folder is written under a temporary name and renamed when complete, so a failed save
    never leaves a complete-looking folder (an existing one stays as it was). :func:`load_model`
    on it restores the same backend (the file names it). A native LLaDA / Dream also keeps the
    original checkpoint's files in ``hub/`` (for :func:`export_model`); remote-code models
    save their code with them (``save_pretrained``).
    """
    tolerant_generation_config(dlm.model)
    small = sum(p.numel() for p in dlm.model.parameters()) < SMALL_MODEL
    with atomic_dir(path) as tmp, quiet_hf_bars(small):  # no shard bar for a few MB
        write_model_files(dlm, tmp)
        save_native_files(dlm, tmp)


def export_model(
    dlm: DiffusionLM, path: str | Path, dtype: str | torch.dtype | None = None
) -> Path:
    """Write a native LLaDA / Dream model in its original hub layout, names and files.

    Args:
        dlm: loaded with backend ``llada`` / ``dream`` from a hub checkpoint or from a folder
            ``save_model`` wrote for one (a trained or merged model).
        path: the folder to write (atomically).
        dtype: the weights' dtype (``None``: as loaded).

    Raises:
        ValueError: not a native LLaDA / Dream model with its original files.
    """
    family = NATIVE.get(dlm.extra.get("native_family", ""))
    if family is None:
        raise ValueError(
            f"export: backend {dlm.spec.name!r} has no hub layout to export to (only the "
            f"native {', '.join(NATIVE)} backends)"
        )
    out_dtype = None if dtype is None else torch_dtype(dtype, None)
    return export_hub(dlm, family, path, dtype=out_dtype)
