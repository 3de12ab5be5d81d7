"""Trajectory records and files (DESIGN §4): round trip, one error per bad field, collate."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from tabom.decoding import NOT_RECORDED, DecodeConfig
from tabom.errors import DataFileError
from tabom.jsonl import JsonlWriter, drop_torn_tail, write_jsonl
from tabom.masking import time_delay_mask
from tabom.models.tiny import build_char_tokenizer
from tabom.train_data import TrajectoryDataset, collate_trajectories
from tabom.trajectory import (
    TrajectoryRecord,
    read_trajectories,
    tokenizer_fingerprint,
)

TOK = build_char_tokenizer()
FP = tokenizer_fingerprint(TOK)


def gen(**over) -> dict:
    base = {
        "steps": 4,
        "gen_length": 4,
        "block_length": None,
        "temperature": 1.0,
        "top_p": 1.0,
        "threshold": None,
        "seed": 0,
        "model": "tiny-base",
        "backend": "tiny",
        "shift_logits": False,
        "vocab_size": len(TOK),
        "tokenizer": FP,
    }
    return {**base, **over}


def record(i: int = 0, **over) -> TrajectoryRecord:
    base = {
        "id": f"addition-1+2#{i}",
        "prompt_id": "addition-1+2",
        "sample": i,
        "prompt": "1+2=",
        "prompt_token_ids": TOK("1+2=", add_special_tokens=False)["input_ids"],
        "response_token_ids": TOK("3", add_special_tokens=False)["input_ids"] + [1, 1, 1],
        "decoding_order": [0, 2, 1, 3],
        "response_text": "3",
        "method": "confidence",
        "data_source": "addition:max_digits=1",
        "verified": True,
        "gen": gen(),
        "decode_entropy": [0.5, float("nan"), 0.25, 1.0],
    }
    return TrajectoryRecord(**{**base, **over})


def test_round_trip_write_read(tmp_path):
    path = tmp_path / "t.jsonl"
    recs = [record(0), record(1, verified=None, decode_entropy=None, decoding_order=[3, 2, 1, -1])]
    with JsonlWriter(path) as w:
        for r in recs:
            w.write(r)
        w.sync()
    back = read_trajectories(path, tokenizer=TOK, vocab_size=len(TOK))
    assert [b.line for b in back] == [1, 2]
    assert back[1] == recs[1]
    # NaN entropy (a position never committed) is written as null: strict JSON
    assert back[0].decode_entropy == [0.5, None, 0.25, 1.0]
    assert {**back[0].to_dict(), "decode_entropy": None} == {
        **recs[0].to_dict(),
        "decode_entropy": None,
    }
    text = path.read_text()
    assert "NaN" not in text and text.count("\n") == 2
    # the reference trainer's fields are there under their names
    first = json.loads(text.splitlines()[0])
    for key in ("response_token_ids", "decoding_order", "method", "data_source"):
        assert key in first
    # rewriting what was read gives the same bytes
    write_jsonl(tmp_path / "u.jsonl", back)
    assert (tmp_path / "u.jsonl").read_bytes() == path.read_bytes()


def _mutate(obj: dict, key: str, value) -> dict:
    obj = json.loads(json.dumps(obj))
    node = obj
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[leaf]
    else:
        node[leaf] = value
    return obj


BAD = [
    ("decoding_order", [0, 1, 2], "decoding_order", "length 3 differs"),
    ("response_token_ids", [21, 1, 1, len(TOK)], "response_token_ids", "outside [0, 100)"),
    ("prompt_token_ids", [-1, 21], "prompt_token_ids", "outside [0, 100)"),
    ("decoding_order", [0, 1, 2, 4], "decoding_order", "item 3 is 4, outside [-1, 4)"),
    ("decoding_order", [0, 1, 2, -2], "decoding_order", "item 3 is -2"),
    ("schema_version", 2, "schema_version", "unknown schema version 2"),
    ("method", "low_confidence", "method", "not one of"),
    ("method", KeyError, "method", "missing"),
    ("verified", "yes", "verified", "true/false/null"),
    ("gen.gen_length", 5, "gen.gen_length", "5 but the response has 4 tokens"),
    ("gen.steps", None, "gen.steps", "positive int"),
    ("gen.tokenizer", {"size": 100, "sha256": "0" * 64}, "gen.tokenizer", "differs from the model"),
    ("decode_entropy", [0.1, 0.2], "decode_entropy", "4 numbers or nulls"),
]


@pytest.mark.parametrize(("key", "value", "field", "reason"), BAD)
def test_each_bad_field_names_file_line_and_field(tmp_path, key, value, field, reason):
    path = tmp_path / "bad.jsonl"
    good = record(0).to_dict()
    bad = _mutate(record(1).to_dict(), key, value)
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataFileError) as err:
        read_trajectories(path, tokenizer=TOK)
    assert str(err.value).startswith(f"{path}:2: field {field!r}: ")
    assert reason in str(err.value)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), 2, field)


def test_a_different_tokenizer_is_refused_before_its_ids_are_checked(tmp_path):
    other = build_char_tokenizer()
    other.add_tokens(["<x>"])
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [record(0, gen=gen(tokenizer=tokenizer_fingerprint(other)))])
    with pytest.raises(DataFileError, match=r":1: field 'gen.tokenizer': tokenizer differs"):
        read_trajectories(path, tokenizer=TOK)
    assert tokenizer_fingerprint(build_char_tokenizer()) == FP  # stable across builds


def test_threshold_mode_bounds_steps_by_the_response_length(tmp_path):
    path = tmp_path / "t.jsonl"
    g = gen(steps=None, threshold=0.9)
    write_jsonl(path, [record(0, gen=g, decoding_order=[0, 0, 3, 1])])
    assert read_trajectories(path)[0].gen["threshold"] == 0.9
    write_jsonl(path, [record(0, gen=g, decoding_order=[0, 0, 4, 1])])
    with pytest.raises(DataFileError, match="'decoding_order': item 2 is 4, outside"):
        read_trajectories(path)


def test_file_level_errors(tmp_path):
    path = tmp_path / "t.jsonl"
    line = record(0).to_line()
    path.write_text(line + line)
    with pytest.raises(
        DataFileError, match=r":2: field 'id': 'addition-1\+2#0' repeats line 1"
    ):
        read_trajectories(path)
    path.write_text(line + "{not json\n")
    with pytest.raises(DataFileError, match=r":2: field '<line>': not valid JSON"):
        read_trajectories(path)
    path.write_text(line + line[:30])
    with pytest.raises(DataFileError, match=r":2: field '<line>': truncated last line"):
        read_trajectories(path)
    path.write_text(line)
    with pytest.raises(DataFileError, match=r":1: field 'gen.seed': written with seed=0"):
        read_trajectories(path, gen=gen(seed=1))


def test_drop_torn_tail_cuts_the_partial_line_with_a_warning(tmp_path):
    path = tmp_path / "t.jsonl"
    full = record(0).to_line() + record(1).to_line()
    path.write_text(full[:-20])
    with pytest.warns(RuntimeWarning, match=r"t.jsonl:2: dropped a truncated last line"):
        assert drop_torn_tail(path)
    assert path.read_text() == record(0).to_line()
    assert not drop_torn_tail(path)  # complete file: untouched


def test_collate_pads_decoding_order_with_minus_one_and_feeds_time_delay_masking():
    short = record(0, prompt_token_ids=[21], decode_entropy=None)
    T = 6
    long = record(
        1,
        prompt_token_ids=[21, 15, 22],
        response_token_ids=[23, 24, 25, 1, 1, 1],
        decoding_order=[5, 0, 1, 2, 4, 3],
        gen=gen(gen_length=T, steps=T),
        decode_entropy=[0.1] * T,
    )
    ds = TrajectoryDataset([short, long])
    assert len(ds) == 2 and ds[1].decode_entropy.shape == (T,)
    batch = collate_trajectories([ds[0], ds[1]], pad_token_id=0)
    assert batch.input_ids.shape == (2, 9) and batch.ids == [short.id, long.id]
    # left padding: row 0 is 5 tokens long, its first 4 positions are pad
    assert batch.input_ids[0].tolist() == [0, 0, 0, 0, 21, *short.response_token_ids]
    assert batch.attention_mask[0].tolist() == [0] * 4 + [1] * 5
    assert batch.response_mask[0].tolist() == [False] * 5 + [True] * 4
    assert batch.decoding_order[0].tolist() == [-1] * 5 + short.decoding_order
    assert batch.decoding_order[1].tolist() == [-1] * 3 + long.decoding_order
    assert batch.decode_entropy is None  # not every record has it
    with_entropy = collate_trajectories([ds[1], ds[1]], pad_token_id=0).decode_entropy
    assert with_entropy is not None and math.isnan(with_entropy[0, 0])
    plan = time_delay_mask(
        batch.input_ids,
        batch.decoding_order,
        response_mask=batch.response_mask,
        window=2,
        mask_token_id=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert not (plan.supervise & ~batch.response_mask).any()


# --------------------------------------------------------------------------- the gen record

OLD = Path(__file__).parent / "data" / "trajectories-v1"
"""Files written by ``tabom distill`` before the whole DecodeConfig was recorded (main at
d1607c1; tests/data/README.md): their ``gen`` has no score, tokens_per_step nor cache."""


def test_gen_records_every_decode_field_and_reads_back_the_same_config(tmp_path):
    """A field of DecodeConfig travels through ``gen`` without being named anywhere else."""
    cfg = DecodeConfig(gen_length=8, tokens_per_step=2, block_length=4, score="margin",
                       temperature=0.5, top_p=0.9, top_k=3, cache="prefix")  # fmt: skip
    rec = cfg.record()
    assert set(rec) == {f.name for f in fields(DecodeConfig)} - set(NOT_RECORDED)
    assert DecodeConfig.from_record(rec) == dataclasses.replace(cfg, steps=4, tokens_per_step=1)
    thr = DecodeConfig(gen_length=8, threshold=0.9).record()
    assert thr["steps"] is None and DecodeConfig.from_record(thr).threshold == 0.9
    # a record of these settings reads back as them, with the file's types
    r = record(0, gen=gen(**rec | {"gen_length": 4, "block_length": 2, "steps": 4}),
               method="margin")  # fmt: skip
    write_jsonl(tmp_path / "t.jsonl", [r])
    (back,) = read_trajectories(tmp_path / "t.jsonl", tokenizer=TOK)
    assert back.decode_config() == dataclasses.replace(cfg, gen_length=4, block_length=2,
                                                       steps=4, tokens_per_step=1)  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value", "field", "reason"),
    [
        ("gen.top_k", -1, "gen.top_k", "-1 is out of range; it must be >= 0"),
        ("gen.cache", "full", "gen.cache", "'full' is not one of"),
        ("gen.score", "entropy", "gen.score", "but the record's method is 'confidence'"),
        ("gen.block_length", 3, "gen", "gen_length (4) must be divisible by block_length (3)"),
        ("gen.temperature", "hot", "gen.temperature", "expected a number"),
    ],
)
def test_a_bad_decode_setting_in_gen_names_its_field(tmp_path, key, value, field, reason):
    bad = _mutate(record(0).to_dict(), key, value)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataFileError) as err:
        read_trajectories(path)
    assert err.value.field == field and reason in str(err.value), str(err.value)


def test_files_written_before_the_whole_config_was_recorded_read_back():
    fixed = read_trajectories(OLD / "fixed.jsonl", tokenizer=TOK)
    assert len(fixed) == 4 and "score" not in fixed[0].gen and "cache" not in fixed[0].gen
    # what was recorded, the rest at the defaults that decoded it (score: the method)
    want = DecodeConfig(gen_length=6, steps=3, temperature=1.0, top_k=5)
    assert all(r.decode_config() == want for r in fixed)
    thr = [r.decode_config() for r in read_trajectories(OLD / "threshold.jsonl")]
    assert thr == [DecodeConfig(gen_length=6, score="entropy", threshold=0.5)] * 2
    # the settings that wrote it, recorded today, accept the old file (resume) ...
    today = DecodeConfig(tokens_per_step=2, temperature=1.0, top_k=5).resolve(6).record()
    run = {**fixed[0].gen, **today}
    assert "score" in run and read_trajectories(OLD / "fixed.jsonl", gen=run)
    # ... and other settings do not, naming the one that differs
    for change, key in [({"cache": "dual"}, "gen.cache"), ({"score": "margin"}, "gen.score"),
                        ({"top_k": 4}, "gen.top_k")]:  # fmt: skip
        with pytest.raises(DataFileError, match=key) as err:
            read_trajectories(OLD / "fixed.jsonl", gen={**run, **change})
        assert err.value.line == 1
