"""Model loading: one entry point, backends as data (DESIGN §2)."""

from __future__ import annotations

from pathlib import Path

from tabom.models.base import BackendSpec, DiffusionLM, align_logits
from tabom.models.tiny import TinyModelConfig, build_tiny, load_tiny, save_tiny

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHIPPED = {"tiny-base": ASSETS / "tiny-base"}
DEFAULT_MODEL = "tiny-base"

__all__ = [
    "BackendSpec",
    "DiffusionLM",
    "TinyModelConfig",
    "align_logits",
    "build_tiny",
    "load_model",
    "load_tiny",
    "resolve_model_path",
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


def load_model(name_or_path: str = DEFAULT_MODEL, **kwargs) -> DiffusionLM:
    """Load a diffusion LM by shipped name or local folder (tiny backends).

    Example:
        >>> dlm = load_model("tiny-base")
    """
    return load_tiny(resolve_model_path(name_or_path), **kwargs)
