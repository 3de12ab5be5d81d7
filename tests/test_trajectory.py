"""Trajectory records and files (DESIGN §4): round trip, one error per bad field, collate."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tabom.jsonl import JsonlWriter, drop_torn_tail, write_jsonl
from tabom.masking import time_delay_mask
from tabom.models.tiny import build_char_tokenizer
from tabom.train_data import TrajectoryDataset, collate_trajectories
from tabom.trajectory import (
    TrajectoryFileError,
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
    with pytest.raises(TrajectoryFileError) as err:
        read_trajectories(path, tokenizer=TOK)
    assert str(err.value).startswith(f"{path}:2: field {field!r}: ")
    assert reason in str(err.value)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), 2, field)


def test_a_different_tokenizer_is_refused_before_its_ids_are_checked(tmp_path):
    other = build_char_tokenizer()
    other.add_tokens(["<x>"])
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [record(0, gen=gen(tokenizer=tokenizer_fingerprint(other)))])
    with pytest.raises(TrajectoryFileError, match=r":1: field 'gen.tokenizer': tokenizer differs"):
        read_trajectories(path, tokenizer=TOK)
    assert tokenizer_fingerprint(build_char_tokenizer()) == FP  # stable across builds


def test_threshold_mode_bounds_steps_by_the_response_length(tmp_path):
    path = tmp_path / "t.jsonl"
    g = gen(steps=None, threshold=0.9)
    write_jsonl(path, [record(0, gen=g, decoding_order=[0, 0, 3, 1])])
    assert read_trajectories(path)[0].gen["threshold"] == 0.9
    write_jsonl(path, [record(0, gen=g, decoding_order=[0, 0, 4, 1])])
    with pytest.raises(TrajectoryFileError, match="'decoding_order': item 2 is 4, outside"):
        read_trajectories(path)


def test_file_level_errors(tmp_path):
    path = tmp_path / "t.jsonl"
    line = record(0).to_line()
    path.write_text(line + line)
    with pytest.raises(
        TrajectoryFileError, match=r":2: field 'id': 'addition-1\+2#0' repeats line 1"
    ):
        read_trajectories(path)
    path.write_text(line + "{not json\n")
    with pytest.raises(TrajectoryFileError, match=r":2: field '<line>': not valid JSON"):
        read_trajectories(path)
    path.write_text(line + line[:30])
    with pytest.raises(TrajectoryFileError, match=r":2: field '<line>': truncated last line"):
        read_trajectories(path)
    path.write_text(line)
    with pytest.raises(TrajectoryFileError, match=r":1: field 'gen.seed': written with seed=0"):
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
    assert len(ds) == 2 and ds[1]["decode_entropy"].shape == (T,)
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
