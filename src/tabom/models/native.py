"""Hub checkpoints of LLaDA and Dream in transformers' own Llama / Qwen2 classes (DESIGN §2).

A :class:`NativeFamily` is data: how a hub ``config.json`` becomes a ``LlamaConfig`` /
``Qwen2Config`` with bidirectional attention (``is_causal=False``), and the regex maps between
the hub's parameter names and the native ones. :func:`load_native` reads the checkpoint's
``config.json`` and safetensors (one file or shards with their index) with
``from_pretrained(..., key_mapping=...)`` (tensors renamed as they are read: no second copy)
and refuses a map that leaves any weight missing or unused. No remote code runs.

A folder written by :func:`save_native_files` (``tabom train``'s ``model/``) holds the native
config and names plus ``hub/``: the original checkpoint's ``config.json``, tokenizer and code
files, so that :func:`export_hub` can write a trained model back in the hub's layout and names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tabom.models.base import DiffusionLM, make_bidirectional

HUB_DIR = "hub"
"""Subfolder of a saved native model holding the original checkpoint's non-weight files."""
INDEX_FILE = "model.safetensors.index.json"
HUB_FILE_NAMES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    INDEX_FILE,
)
"""Non-weight files of a hub checkpoint kept for export (plus ``*.py`` and ``LICENSE*``)."""


@dataclass(frozen=True)
class NativeFamily:
    """A hub family loaded into a transformers class, as data.

    Attributes:
        name: backend name (``llada``, ``dream``).
        native_model_type: the native config's ``model_type`` (``llama``, ``qwen2``); a
            folder whose ``config.json`` has it is already in native layout.
        build_config: hub ``config.json`` (dict) and a location for errors -> native config
            (bidirectional, no cache); raises ``ValueError`` naming an unsupported field.
        to_native: ``(hub regex, native replacement)`` pairs (``\\1`` the only group
            reference); empty: the names are the same in both layouts (Dream). No pattern may
            match another pair's output: transformers 5 applies every matching pair in turn,
            4.x the first only, and :func:`rename` the first only.
        to_hub: the inverse pairs (export).
        model_class: ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` (the name in transformers).
        load_tokenizer: folder -> tokenizer, without remote code.
    """

    name: str
    native_model_type: str
    build_config: Callable[[dict[str, Any], str], Any]
    to_native: tuple[tuple[str, str], ...]
    to_hub: tuple[tuple[str, str], ...]
    model_class: str
    load_tokenizer: Callable[[Path], Any]


def rename(name: str, pairs: tuple[tuple[str, str], ...], where: str = "<names>") -> str:
    """``name`` under the first pattern of ``pairs`` that matches it.

    Raises:
        KeyError: no pattern matches (names the parameter and where it came from).
    """
    if not pairs:  # the identity
        return name
    for pattern, repl in pairs:
        new, n = re.subn(pattern, repl, name)
        if n:
            return new
    raise KeyError(f"{where}: parameter {name!r} has no name in the other layout")


def checkpoint_dir(name_or_path: str | Path) -> Path:
    """A local folder with the checkpoint: the folder itself, or the hub snapshot (cached).

    Raises:
        FileNotFoundError: not a folder, and the hub id cannot be fetched (offline, no cache).
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                str(name_or_path),
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.py", "*.jinja", "LICENSE*"],
            )
        )
    except Exception as e:  # the hub client raises many kinds (offline, gated, missing)
        raise FileNotFoundError(
            f"model {str(name_or_path)!r}: not a local folder and the hub snapshot cannot be "
            f"fetched (offline without a cache, or no such hub id?): {e}"
        ) from None


def hub_files(folder: Path) -> list[Path]:
    """The non-weight files of a hub checkpoint that an export carries over."""
    keep = [folder / n for n in HUB_FILE_NAMES if (folder / n).is_file()]
    keep += sorted(p for p in folder.glob("*.py") if p.is_file())
    keep += sorted(p for p in folder.glob("LICENSE*") if p.is_file())
    return keep


def _transformers_class(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


def load_native(
    name_or_path: str | Path,
    family: NativeFamily,
    defaults: Any,
    *,
    dtype: str | torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> DiffusionLM:
    """Load a hub checkpoint (or a saved native folder) of ``family`` in its native class.

    Args:
        name_or_path: hub id or local folder (hub layout, or native layout with ``hub/``).
        family: the family's config and name maps.
        defaults: its ``BackendDefaults`` (mask id sources, stop tokens, template, LoRA).
        dtype: weights' dtype (:func:`~tabom.models.hf.torch_dtype`; ``None``: bf16 on CUDA,
            else fp32).
        device: where to put the model (``None``: CPU).

    Returns:
        The model in eval mode (SDPA attention), its tokenizer and spec; ``extra`` holds
        ``native_family`` and ``hub_dir`` (the original checkpoint's files, for export).

    Raises:
        FileNotFoundError: the folder has no ``config.json``.
        ValueError: an unreadable or unsupported ``config.json``, a causal native config, or
            a name map that leaves weights missing or unused; names the checkpoint.
    """
    from transformers.utils import logging as hf_logging

    from tabom.models.hf import dtype_keyword, resolve_spec, torch_dtype

    weights_dtype = torch_dtype(dtype, device)  # a bad name fails before any download
    folder = checkpoint_dir(name_or_path)
    where = str(name_or_path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{where}: no config.json in {folder}")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file}: not valid JSON (line {e.lineno}): {e.msg}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{config_file}: expected a JSON object, got {type(raw).__name__}")
    cls = _transformers_class(family.model_class)
    if raw.get("model_type") == family.native_model_type:  # saved by tabom: native names
        config = cls.config_class.from_pretrained(folder)
        if getattr(config, "is_causal", True) is not False:
            raise ValueError(
                f"{where}/config.json: model_type {family.native_model_type!r} with is_causal "
                f"true; the {family.name} backend needs is_causal false (bidirectional)"
            )
        config.use_cache = False
        hub_dir = folder / HUB_DIR if (folder / HUB_DIR).is_dir() else None
    else:
        config = family.build_config(raw, f"{where}/config.json")
        hub_dir = folder
    # hub names are renamed as read; native names match no pattern and pass unchanged (and
    # transformers 5 saves a model loaded with a key mapping under the original names)
    key_mapping = dict(family.to_native) or None
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the strict check below reports mismatches itself
    try:
        model, info = cls.from_pretrained(
            folder,
            config=config,
            key_mapping=key_mapping,
            **{dtype_keyword(): weights_dtype},
            attn_implementation="sdpa",
            output_loading_info=True,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    bad = {k: sorted(info[k]) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(bad.values()):
        weights = INDEX_FILE if (folder / INDEX_FILE).is_file() else "model.safetensors"
        raise ValueError(
            f"{where} ({weights}): the {family.name} name map does not fit this checkpoint: "
            + "; ".join(f"{k} {v}" for k, v in bad.items() if v)
        )
    make_bidirectional(model)
    if device is not None:
        model.to(device)
    model.eval()
    tok = family.load_tokenizer(folder)
    tok.padding_side = "left"
    spec = resolve_spec(defaults, config, tok, model, where)
    dlm = DiffusionLM(model=model, tokenizer=tok, spec=spec)
    dlm.extra["native_family"] = family.name
    if hub_dir is not None:
        dlm.extra["hub_dir"] = str(hub_dir)
    return dlm


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Write a folder atomically: yields a temporary sibling, renamed to ``path`` on success.

    On an exception the temporary folder is removed and ``path`` is left as it was (absent, or
    the previous complete folder); an existing ``path`` is replaced only after the new one is
    complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.parent / f".old-{path.name}-{os.getpid()}"
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def save_native_files(dlm: DiffusionLM, folder: Path) -> None:
    """Copy the original checkpoint's non-weight files into ``folder/hub`` (for export)."""
    hub_dir = dlm.extra.get("hub_dir")
    if hub_dir is None:
        return
    (folder / HUB_DIR).mkdir()
    for f in hub_files(Path(hub_dir)):
        shutil.copy2(f, folder / HUB_DIR / f.name)


def hub_state_dict(model: Any, family: NativeFamily) -> dict[str, torch.Tensor]:
    """The model's weights under the hub's names (a view: no copy).

    Raises:
        KeyError: a native parameter with no hub name.
    """
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    out = {}
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # the hub file stores a tied head once, as the embedding
        out[rename(name, family.to_hub, family.name)] = tensor
    return out


def export_hub(
    dlm: DiffusionLM,
    family: NativeFamily,
    out: str | Path,
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``dlm`` back in the original checkpoint's layout, names and files, atomically.

    Weights go under the hub's parameter names, in the hub's shards when the original had an
    index (same file names and tensor-to-file assignment), else one ``model.safetensors``;
    ``config.json``, the tokenizer files, the remote code and the licence are copied byte for
    byte from the original, so the folder drops into the hub repository.

    Args:
        dlm: a natively loaded (or trained) llada / dream model with ``extra['hub_dir']``.
        family: its family.
        out: the folder to write.
        dtype: the weights' dtype (``None``: as they are).

    Returns:
        ``out``.

    Raises:
        ValueError: the model carries no original checkpoint files (not loaded from a hub
            layout or a tabom-saved native folder), or the original index lacks a tensor.
    """
    from safetensors.torch import save_file

    hub_dir = dlm.extra.get("hub_dir")
    if dlm.extra.get("native_family") != family.name or hub_dir is None:
        raise ValueError(
            f"export: the model is not a natively loaded {family.name} checkpoint with its "
            "original files (load a hub folder, or a folder saved by tabom from one)"
        )
    hub_dir = Path(hub_dir)
    state = hub_state_dict(dlm.model, family)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    index = hub_dir / INDEX_FILE
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        missing = sorted(set(state) - set(weight_map))
        extra = sorted(set(weight_map) - set(state))
        if missing or extra:
            raise ValueError(
                f"export: {index} does not list the model's tensors (missing {missing[:5]}, "
                f"not in the model {extra[:5]})"
            )
    else:
        weight_map = dict.fromkeys(state, "model.safetensors")
    with atomic_dir(out) as tmp:
        for shard in sorted(set(weight_map.values())):
            tensors = {
                k: v.detach().contiguous().cpu() for k, v in state.items() if weight_map[k] == shard
            }
            save_file(tensors, str(tmp / shard), metadata={"format": "pt"})
        for f in hub_files(hub_dir):
            if f.name == INDEX_FILE:
                total = sum(v.numel() * v.element_size() for v in state.values())
                meta = {"metadata": {"total_size": total}, "weight_map": weight_map}
                (tmp / INDEX_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            else:
                shutil.copy2(f, tmp / f.name)
    return Path(out)


__all__ = [
    "HUB_DIR",
    "NativeFamily",
    "atomic_dir",
    "checkpoint_dir",
    "export_hub",
    "hub_files",
    "hub_state_dict",
    "load_native",
    "rename",
    "save_native_files",
]
