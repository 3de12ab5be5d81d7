"""The resumable, sharded trajectory store as a component (DESIGN §4, "Resume"), without a model:
shards merged in prompt order with nothing skipped or written twice, torn tails cut, files of
other settings refused before anything changes, the settings check of a rerun."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from tabom.errors import DataFileError, TabomError
from tabom.jsonl import JsonlWriter
from tabom.models.tiny import build_char_tokenizer
from tabom.trajectory import TrajectoryRecord, read_trajectories, tokenizer_fingerprint
from tabom.trajectory_store import (
    GroupStats,
    TrajectoryStore,
    check_resume,
    read_progress,
    shard_paths,
    sidecar,
)

TOK = build_char_tokenizer()
GEN = {
    "steps": 2,
    "gen_length": 2,
    "block_length": None,
    "temperature": 1.0,
    "top_p": 1.0,
    "threshold": None,
    "seed": 0,
    "model": "tiny-base",
    "backend": "tiny",
    "shift_logits": False,
    "vocab_size": len(TOK),
    "tokenizer": tokenizer_fingerprint(TOK),
}
PROMPTS = ["p0", "p1", "p2", "p3", "p4"]  # groups of 2: [p0 p1] [p2 p3] [p4]
GROUPS = [PROMPTS[i : i + 2] for i in range(0, len(PROMPTS), 2)]
N = 2  # samples per prompt
PLAN = {f"{p}#{j}": i * N + j for i, p in enumerate(PROMPTS) for j in range(N)}


def rec(pid: str, j: int, gen: dict | None = None) -> TrajectoryRecord:
    return TrajectoryRecord(
        id=f"{pid}#{j}",
        prompt_id=pid,
        sample=j,
        prompt=pid,
        prompt_token_ids=[5],
        response_token_ids=[6, 7],
        decoding_order=[1, 0],
        response_text="x",
        method="confidence",
        data_source="t",
        verified=True,
        gen=gen or GEN,
    )


def group(g: int) -> tuple[list[TrajectoryRecord], GroupStats]:
    ids = GROUPS[g]
    stats = GroupStats(g, ids, [[True] * N for _ in ids], len(ids) * N, 2, 4 * len(ids), 0.1)
    return [rec(p, j) for p in ids for j in range(N)], stats


def store(output: Path) -> TrajectoryStore:
    return TrajectoryStore(output, PLAN, GROUPS, GEN)


def test_shards_merge_in_prompt_order_with_nothing_skipped_or_twice(tmp_path):
    out = tmp_path / "t.jsonl"
    s = store(out)
    # a killed sharded run: the main file holds group 1 (out of order), shard 0 group 2 and a
    # copy of one of group 1's records, shard 1 group 0 and a torn line of an unfinished write
    with s.writer(None, {}) as w:
        w.add(*group(1))
    with s.writer(0, {}) as w:
        w.add(*group(2))
        w._records.write(rec("p2", 0))
    with s.writer(1, {}) as w:
        w.add(*group(0))
    shard1 = shard_paths(out, 1)[0]
    with shard1.open("ab") as f:
        f.write(b'{"schema_version": 1, "id": "p')
    with pytest.warns(RuntimeWarning, match="dropped a truncated last line"):
        lines, done = s.consolidate()
    want = [f"{p}#{j}" for p in PROMPTS for j in range(N)]
    assert [r.id for r in read_trajectories(out, gen=GEN)] == want
    assert list(lines) == want and sorted(done) == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl", "t.jsonl.progress"]
    assert sorted(read_progress(sidecar(out, ".progress"), GROUPS)) == [0, 1, 2]
    # what other processes read back is what the main process left
    assert s.read() == (lines, done)
    # a rerun appends nothing that is there: the writer skips the ids the file holds
    with s.writer(None, lines) as w:
        w.add(*group(2))
    assert [r.id for r in read_trajectories(out, gen=GEN)] == want
    assert s.consolidate()[0] == lines


def test_a_record_that_parts_from_the_file_warns_and_the_file_wins(tmp_path):
    out = tmp_path / "t.jsonl"
    s = store(out)
    records, stats = group(0)
    with s.writer(None, {}) as w:
        w.add(records, stats)
    lines, _ = s.consolidate()
    other = dataclasses.replace(records[0], response_text="y")
    with pytest.warns(RuntimeWarning, match="decoded differently"), s.writer(None, lines) as w:
        w.add([other], stats)
    assert read_trajectories(out)[0].response_text == "x"


def test_other_settings_or_prompts_are_refused_before_anything_changes(tmp_path):
    out = tmp_path / "t.jsonl"
    s = store(out)
    with s.writer(None, {}) as w:
        w.add(*group(0))
    with JsonlWriter(out) as w:
        w.write(rec("p2", 0, gen={**GEN, "seed": 1}))
    with JsonlWriter(shard_paths(out, 0)[0]) as w:
        w.write(b := rec("p9", 0))  # not a sample of this run's prompts
    assert b.id not in PLAN
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(DataFileError, match=r"t\.jsonl:5: field 'gen\.seed'"):
        s.consolidate()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # a progress line of another grouping of the prompts
    out2 = tmp_path / "u.jsonl"
    with store(out2).writer(None, {}) as w:
        w.add(*group(0))
    regrouped = TrajectoryStore(out2, PLAN, [PROMPTS[:1], PROMPTS[1:]], GEN)
    with pytest.raises(DataFileError, match=r"progress:1: field 'prompt_ids'"):
        regrouped.consolidate()


def test_check_resume_names_each_setting_that_differs(tmp_path):
    out = tmp_path / "t.jsonl"
    now = {"seed": 0, "decode": {"score": "confidence", "steps": 4}}
    check_resume(out, now, {})  # nothing written: nothing to check
    with store(out).writer(None, {}) as w:
        w.add(*group(0))
    # without a config sidecar (an older file): the first record's fields
    check_resume(out, now, {"decode.score": ("method", "confidence")})
    with pytest.raises(TabomError, match=r"decode\.score: written with 'confidence', now 'margin'"):
        check_resume(out, now, {"decode.score": ("method", "margin")})
    sidecar(out, ".config.yaml").write_text(yaml.safe_dump({**now, "seed": 3, "n_prompts": 9}))
    with pytest.raises(TabomError, match=r"seed: written with 3, now 0") as err:
        check_resume(out, now, {})
    assert "n_prompts" not in str(err.value)  # only the settings given are compared
    check_resume(out, {**now, "seed": 3}, {})
    sidecar(out, ".config.yaml").write_text("- a list\n")
    with pytest.raises(DataFileError, match=r"config\.yaml:0: field '<file>'"):
        check_resume(out, now, {})
