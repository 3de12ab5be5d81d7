"""Trajectory records and files: the schema, read and validated (DESIGN §4; torch is imported
only when a record's decode settings are read).

One record per line: a self-distilled answer with its trajectory (``decoding_order[p]`` = the
decode step of response position p, -1 = never decoded), compatible with the reference
trainer's ``response_token_ids`` / ``decoding_order`` / ``method`` / ``data_source`` and made
self-describing by ``schema_version``, ``id``, the prompt ids, ``verified`` and ``gen`` (the
generation settings: the whole :class:`tabom.decoding.DecodeConfig` by field name, the model
and a fingerprint of its tokenizer). Reading validates every record and raises one
:class:`DataFileError` naming file, line and field. Lines are parsed, appended and
written atomically by :mod:`tabom.jsonl` (``JsonlWriter``, ``write_jsonl``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tabom.config import ConfigError, convert
from tabom.errors import DataFileError
from tabom.jsonl import iter_json_lines

if TYPE_CHECKING:
    from tabom.decoding import DecodeConfig

SCHEMA_VERSION = 1
METHODS = ("confidence", "margin", "entropy", "random")
"""The scores of DESIGN §3 (``decoding.SCORES``; repeated here so that importing this module
does not import torch)."""

_GEN_TYPES: dict[str, tuple[type, ...]] = {
    "gen_length": (int,),
    "seed": (int,),
    "model": (str,),
    "backend": (str,),
    "shift_logits": (bool,),
    "tokenizer": (dict,),
}
"""Required ``gen`` keys and their JSON types besides the decode settings (``steps`` is checked
on its own: null in threshold mode). The decode settings are :class:`tabom.decoding.DecodeConfig`'s
fields, read by :func:`decode_settings`."""


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """What identifies a tokenizer in ``gen.tokenizer``: its size and a hash of its vocabulary.

    Args:
        tokenizer: a Hugging Face tokenizer (anything with ``get_vocab()``).

    Returns:
        ``{"size": len(vocab), "sha256": hex digest of the (id, token) pairs sorted by id}``.
    """
    vocab = tokenizer.get_vocab()
    pairs = sorted((int(i), str(t)) for t, i in vocab.items())
    digest = hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode("utf-8")).hexdigest()
    return {"size": len(pairs), "sha256": digest}


@dataclass
class TrajectoryRecord:
    """One self-distilled answer and its trajectory (one line of a trajectory file).

    Attributes:
        id: unique key, ``{prompt_id}#{sample}`` (resume and dedup key).
        prompt_id: the prompt's stable id (``Example.id``).
        sample: index of this answer among the prompt's samples.
        prompt: the user prompt, before any chat template.
        prompt_token_ids: the exact ids that preceded the response (no padding).
        response_token_ids: the T committed tokens, EOS tail included.
        decoding_order: T decode steps d[p]; -1 = never decoded.
        response_text: the answer cut at the first EOS.
        method: the score that ordered the unmasking (confidence / margin / entropy / random).
        data_source: task spec or dataset name.
        verified: the verifier's verdict, ``None`` where the task has none.
        gen: generation settings: the decode settings, every field of
            :class:`tabom.decoding.DecodeConfig` by name (:meth:`DecodeConfig.record`; read
            back by :meth:`decode_config`), then seed, model, backend, shift_logits,
            vocab_size, tokenizer and the distill run's n_samples, prompts_per_batch.
        decode_entropy: T entropies of the decoding model's proposal at each position when
            it was committed (``None`` where never committed), or ``None`` if not recorded.
        schema_version: format version (1).
        line: 1-based line the record was read from (0 when built in memory; not written).
    """

    id: str
    prompt_id: str
    sample: int
    prompt: str
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    decoding_order: list[int]
    response_text: str
    method: str
    data_source: str
    verified: bool | None
    gen: dict[str, Any]
    decode_entropy: list[float | None] | None = None
    schema_version: int = SCHEMA_VERSION
    line: int = field(default=0, compare=False, repr=False)

    def decode_config(self) -> DecodeConfig:
        """The :class:`~tabom.decoding.DecodeConfig` this answer was decoded with
        (:func:`decode_settings`: a setting an older file lacks is its default)."""
        return decode_settings(self.gen, self.method)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the record, keys in file order (no ``line``)."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "id": self.id,
            "prompt_id": self.prompt_id,
            "sample": self.sample,
            "prompt": self.prompt,
            "prompt_token_ids": list(self.prompt_token_ids),
            "response_token_ids": list(self.response_token_ids),
            "decoding_order": list(self.decoding_order),
            "response_text": self.response_text,
            "method": self.method,
            "data_source": self.data_source,
            "verified": self.verified,
        }
        if self.decode_entropy is not None:
            out["decode_entropy"] = [
                None if v is None or math.isnan(v) else v for v in self.decode_entropy
            ]
        out["gen"] = self.gen
        return out

    def to_line(self) -> str:
        """One line of strict JSON (no NaN), ending in a newline."""
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False) + "\n"


# --------------------------------------------------------------------------- validation


def _int_list(
    path: Path, line: int, rec: dict[str, Any], key: str, low: int, high: int | None
) -> list[int]:
    """``rec[key]`` as a list of ints in ``[low, high)`` (``high=None``: no upper bound)."""
    value = _typed(path, line, rec, key, (list,))
    for i, v in enumerate(value):
        if not isinstance(v, int) or isinstance(v, bool):
            raise DataFileError(path, line, key, f"item {i} is {v!r}, not an integer")
        if v < low or (high is not None and v >= high):
            bound = f"[{low}, {high})" if high is not None else f">= {low}"
            raise DataFileError(path, line, key, f"item {i} is {v}, outside {bound}")
    return value


def _typed(
    path: Path,
    line: int,
    rec: dict[str, Any],
    key: str,
    types: tuple[type, ...],
    prefix: str = "",
) -> Any:
    """``rec[key]`` if present and of one of ``types`` (bools are not ints here)."""
    if key not in rec:
        raise DataFileError(path, line, prefix + key, "missing")
    value = rec[key]
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        raise DataFileError(path, line, prefix + key, f"expected {names}, got {value!r}")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # JSON's "\ud800": not text any tool can print or draw
            raise DataFileError(
                path, line, prefix + key, f"character {e.start} is a lone surrogate, not text"
            ) from None
    return value


def decode_settings(gen: dict[str, Any], method: str | None = None) -> DecodeConfig:
    """The :class:`~tabom.decoding.DecodeConfig` a ``gen`` records (its fields by name, the
    other keys ignored).

    A field the ``gen`` lacks takes its default: files written before the whole config was
    recorded lack ``score``, which is then the record's ``method``, and ``cache``, absent =
    ``none`` (exact); a field added later reads as its default. ``steps`` null (threshold
    mode) resolves to T.

    Raises:
        ConfigError: a bad value (naming ``gen.field``) or settings that do not fit together.
    """
    from tabom.decoding import DecodeConfig  # torch: imported only once a file is read

    names = {f.name for f in fields(DecodeConfig)}
    values = {k: v for k, v in gen.items() if k in names}
    if "score" not in values and method is not None:
        values["score"] = method
    return DecodeConfig.from_record(values, "gen")


def _comparable_gen(gen: dict[str, Any], method: str | None = None) -> dict[str, Any]:
    """``gen`` with every recorded decode setting present (:func:`decode_settings`), so a file
    written before a setting was recorded compares equal to a run with its default."""
    return {**gen, **decode_settings(gen, method).record()}


_CHECKED_GENS: dict[tuple[str, int, str], int] = {}
"""Valid ``(gen, T, method)`` -> their bound: the records of a file share one ``gen``, which is
validated once, not once per record (bounded; only valid ones are kept)."""


def _check_gen(path: Path, line: int, gen: dict[str, Any], length: int, method: str) -> int:
    """Validate ``gen``; return the bound on decode steps (``steps``, or T in threshold mode)."""
    key = (json.dumps(gen, sort_keys=True), length, method)
    if key not in _CHECKED_GENS:
        bound = _check_new_gen(path, line, gen, length, method)
        if len(_CHECKED_GENS) >= 256:
            _CHECKED_GENS.clear()
        _CHECKED_GENS[key] = bound
    return _CHECKED_GENS[key]


def _check_new_gen(path: Path, line: int, gen: dict[str, Any], length: int, method: str) -> int:
    from tabom.decoding import DecodeConfig  # torch: imported only once a file is read

    for key, types in _GEN_TYPES.items():
        _typed(path, line, gen, key, types, prefix="gen.")
    if "steps" not in gen:
        raise DataFileError(path, line, "gen.steps", "missing (null in threshold mode)")
    if "score" in gen and gen["score"] != method:
        raise DataFileError(
            path, line, "gen.score", f"{gen['score']!r} but the record's method is {method!r}"
        )
    try:  # the settings read by the config layer (type, choice, range, and together)
        cfg = decode_settings(gen, method)
    except ConfigError as e:
        for name in (f.name for f in fields(DecodeConfig) if f.name in gen):
            try:  # name the first bad field, as the config layer words it
                convert(DecodeConfig, {name: gen[name]}, "gen")
            except ConfigError as bad:
                reason = str(bad).removeprefix(f"gen.{name}: ")
                raise DataFileError(path, line, f"gen.{name}", reason) from None
        raise DataFileError(path, line, "gen", str(e).removeprefix("gen: ")) from None
    if cfg.gen_length != length:
        raise DataFileError(
            path,
            line,
            "gen.gen_length",
            f"{gen['gen_length']} but the response has {length} tokens",
        )
    if "vocab_size" in gen:
        _typed(path, line, gen, "vocab_size", (int,), prefix="gen.")
    fp = gen["tokenizer"]
    if not isinstance(fp.get("sha256"), str) or not isinstance(fp.get("size"), int):
        raise DataFileError(path, line, "gen.tokenizer", "expected {'size': int, 'sha256': str}")
    steps = gen["steps"]
    if cfg.threshold is None:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise DataFileError(path, line, "gen.steps", f"expected a positive int, got {steps!r}")
        return steps
    if steps is not None:
        raise DataFileError(path, line, "gen.steps", "must be null in threshold mode")
    return length  # every threshold step commits at least one token per row


def parse_record(
    rec: Any,
    *,
    path: str | Path = "<memory>",
    line: int = 0,
    tokenizer: dict[str, Any] | None = None,
    vocab_size: int | None = None,
    max_length: int | None = None,
    mask_token_id: int | None = None,
) -> TrajectoryRecord:
    """Validate one decoded JSON object and build its record.

    Args:
        rec: the object of one line.
        path: file name for error messages.
        line: 1-based line for error messages.
        tokenizer: the model's :func:`tokenizer_fingerprint`; ``gen.tokenizer`` must equal it.
        vocab_size: the model's vocabulary; every id must lie in ``[0, vocab_size)``
            (default: ``gen.vocab_size`` when recorded, else ``gen.tokenizer.size``).
        max_length: the model's positions: prompt + response must fit in them.
        mask_token_id: the model's [MASK] id, which no response token may be (a committed
            token is never the mask).

    Returns:
        The record (with ``line`` set).

    Raises:
        DataFileError: the first problem found, naming the field.
    """
    path = Path(path)
    if not isinstance(rec, dict):
        raise DataFileError(path, line, "<line>", "not a JSON object")
    version = rec.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise DataFileError(
            path, line, "schema_version", f"unknown schema version {version!r} (this reader: 1)"
        )
    rid = _typed(path, line, rec, "id", (str,))
    if not rid:
        raise DataFileError(path, line, "id", "empty")
    prompt_id = _typed(path, line, rec, "prompt_id", (str,))
    sample = _typed(path, line, rec, "sample", (int,))
    if sample < 0:
        raise DataFileError(path, line, "sample", f"{sample} is negative")
    if rid != f"{prompt_id}#{sample}":
        raise DataFileError(
            path,
            line,
            "id",
            f"{rid!r} is not prompt_id#sample ({prompt_id!r}#{sample}): the key of resume "
            "and dedup must match the record",
        )
    prompt = _typed(path, line, rec, "prompt", (str,))
    text = _typed(path, line, rec, "response_text", (str,))
    method = _typed(path, line, rec, "method", (str,))
    if method not in METHODS:
        raise DataFileError(path, line, "method", f"{method!r} is not one of {METHODS}")
    source = _typed(path, line, rec, "data_source", (str,))
    if "verified" not in rec:
        raise DataFileError(path, line, "verified", "missing (null when unverified)")
    verified = rec["verified"]
    if verified is not None and not isinstance(verified, bool):
        raise DataFileError(path, line, "verified", f"expected true/false/null, got {verified!r}")

    # 1) the tokenizer first: ids are only meaningful under the model's vocabulary
    length = len(_typed(path, line, rec, "response_token_ids", (list,)))
    gen = _typed(path, line, rec, "gen", (dict,))
    bound = _check_gen(path, line, gen, length, method)
    if tokenizer is not None and gen["tokenizer"] != tokenizer:
        raise DataFileError(
            path,
            line,
            "gen.tokenizer",
            f"tokenizer differs from the model's (file {gen['tokenizer']}, model {tokenizer})",
        )
    if vocab_size is None:
        vocab_size = gen.get("vocab_size", gen["tokenizer"]["size"])

    # 2) ids inside the vocabulary, steps inside [-1, steps), equal lengths
    prompt_ids = _int_list(path, line, rec, "prompt_token_ids", 0, vocab_size)
    response = _int_list(path, line, rec, "response_token_ids", 0, vocab_size)
    if not response:
        raise DataFileError(path, line, "response_token_ids", "empty")
    for key, ids, why in (
        ("response_token_ids", response, "a committed token is never the mask"),
        ("prompt_token_ids", prompt_ids, "a prompt is given, never masked"),
    ):
        if mask_token_id is not None and mask_token_id in ids:
            raise DataFileError(
                path,
                line,
                key,
                f"item {ids.index(mask_token_id)} is the model's [MASK] id {mask_token_id} ({why})",
            )
    if max_length is not None and len(prompt_ids) + len(response) > max_length:
        raise DataFileError(
            path,
            line,
            "prompt_token_ids",
            f"prompt ({len(prompt_ids)}) + response ({len(response)}) = "
            f"{len(prompt_ids) + len(response)} tokens exceed the model's {max_length} positions",
        )
    order = _int_list(path, line, rec, "decoding_order", -1, bound)
    if len(order) != len(response):
        raise DataFileError(
            path,
            line,
            "decoding_order",
            f"length {len(order)} differs from response_token_ids ({len(response)})",
        )
    if all(d < 0 for d in order):
        raise DataFileError(
            path, line, "decoding_order", "every position is -1: nothing was decoded"
        )
    entropy = rec.get("decode_entropy")
    if entropy is not None:
        if not isinstance(entropy, list) or len(entropy) != len(response):
            raise DataFileError(
                path, line, "decode_entropy", f"expected a list of {len(response)} numbers or nulls"
            )
        for i, v in enumerate(entropy):
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
            ):
                raise DataFileError(
                    path, line, "decode_entropy", f"item {i} is {v!r}, not a finite number"
                )
            if v is not None and v < 0:
                raise DataFileError(
                    path, line, "decode_entropy", f"item {i} is {v}: an entropy is >= 0"
                )
    return TrajectoryRecord(
        id=rid,
        prompt_id=prompt_id,
        sample=sample,
        prompt=prompt,
        prompt_token_ids=prompt_ids,
        response_token_ids=response,
        decoding_order=order,
        response_text=text,
        method=method,
        data_source=source,
        verified=verified,
        gen=gen,
        decode_entropy=entropy,
        line=line,
    )


# --------------------------------------------------------------------------- files


RECORD_PREFIX = b'{"schema_version": '
"""How every line :class:`TrajectoryRecord` writes begins (what a torn last line must start with)."""


def read_trajectories(
    path: str | Path,
    *,
    tokenizer: Any = None,
    vocab_size: int | None = None,
    gen: dict[str, Any] | None = None,
    max_length: int | None = None,
    mask_token_id: int | None = None,
    torn_tail: bool = False,
) -> list[TrajectoryRecord]:
    """Read and validate every record of a trajectory file.

    Args:
        path: the JSONL file.
        tokenizer: the model's tokenizer (or its :func:`tokenizer_fingerprint`); every
            record's ``gen.tokenizer`` must match it.
        vocab_size: the model's vocabulary size (ids must be below it).
        gen: when given, every record's ``gen`` must equal it, decode settings compared as
            :func:`decode_settings` reads them (a file written with other settings is
            refused: resume safety; one written before a setting was recorded holds its
            default).
        max_length: the model's positions (prompt + response must fit).
        mask_token_id: the model's [MASK] id (never a response token).
        torn_tail: read the complete lines of a file whose last line was torn by a kill
            (the caller repairs it after checking them: :func:`tabom.jsonl.drop_torn_tail`).

    Returns:
        The records in file order.

    Raises:
        FileNotFoundError: no such file.
        DataFileError: the first bad line, naming file, line and field (also a
            duplicate ``id`` and a truncated last line).
    """
    path = Path(path)
    if tokenizer is not None and not isinstance(tokenizer, dict):
        tokenizer = tokenizer_fingerprint(tokenizer)
    want = None if gen is None else _comparable_gen(gen)
    records: list[TrajectoryRecord] = []
    seen: dict[str, int] = {}
    prompts: dict[str, tuple[str, list[int], int]] = {}  # prompt_id -> its prompt, first line
    for line, obj in iter_json_lines(path, torn_tail=torn_tail):
        rec = parse_record(
            obj,
            path=path,
            line=line,
            tokenizer=tokenizer,
            vocab_size=vocab_size,
            max_length=max_length,
            mask_token_id=mask_token_id,
        )
        if rec.id in seen:
            raise DataFileError(path, line, "id", f"{rec.id!r} repeats line {seen[rec.id]}")
        if want is not None and (have := _comparable_gen(rec.gen, rec.method)) != want:
            key = next(k for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k))
            raise DataFileError(
                path,
                line,
                f"gen.{key}",
                f"written with {key}={have.get(key)!r}, this run uses {want.get(key)!r} "
                "(use another output file, or the settings that wrote this one)",
            )
        first = prompts.setdefault(rec.prompt_id, (rec.prompt, rec.prompt_token_ids, line))
        if first[:2] != (rec.prompt, rec.prompt_token_ids):
            raise DataFileError(
                path,
                line,
                "prompt",
                f"prompt_id {rec.prompt_id!r} has another prompt on line {first[2]} (one id, "
                "one prompt: samples of a prompt share it)",
            )
        seen[rec.id] = line
        records.append(rec)
    return records


__all__ = [
    "METHODS",
    "RECORD_PREFIX",
    "SCHEMA_VERSION",
    "TrajectoryRecord",
    "parse_record",
    "read_trajectories",
    "decode_settings",
    "tokenizer_fingerprint",
]
