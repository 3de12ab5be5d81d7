"""The code sandbox (DESIGN §7, round 3): verdicts, the end marker, the pool and cache, hostile
candidates under bubblewrap, and the weaker mode only behind its flag."""

from __future__ import annotations

import glob
import os
import socket
import tempfile
import time

import pytest

from tabom import sandbox as sandbox_mod
from tabom.cli import main
from tabom.sandbox import Sandbox, SandboxLimits, SandboxUnavailable, bwrap_works, no_fork_filter
from tabom.tasks import TaskSpecError, make_task

HAVE_BWRAP = bwrap_works()
needs_bwrap = pytest.mark.skipif(
    not HAVE_BWRAP, reason="no working bubblewrap (.ci/run installs it)"
)
LIMITS = SandboxLimits(timeout=2.0, cpu_seconds=2, memory_mb=512, max_output_kb=256)


@pytest.fixture(scope="module")
def sb() -> Sandbox:
    if not HAVE_BWRAP:
        pytest.skip("no working bubblewrap (.ci/run installs it)")
    return Sandbox(LIMITS, workers=2)


def leftovers() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "tabom-sandbox-*")))


# ----------------------------------------------------------------------------- verdicts


@needs_bwrap
@pytest.mark.parametrize(
    ("program", "status", "reason"),
    [
        ("def f(x):\n    return x + 1\nassert f(1) == 2\n", "passed", "ran to the end"),
        ("assert 1 == 2\n", "failed", "AssertionError"),
        ("def f(:\n", "failed", "SyntaxError"),
        ("import sys\nsys.exit(0)\nassert False\n", "failed", "no end marker"),
        ("import os\nos._exit(0)\nassert False\n", "failed", "no end marker"),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "failed", "signal 9"),
        ("import sys\nsys.exit(3)\n", "failed", "exit code 3"),
        ("print('\\nNOT-THE-NONCE')\nimport os\nos._exit(0)\n", "failed", "no end marker"),
    ],
)
def test_a_pass_means_the_program_ran_to_its_end(sb, program, status, reason):
    v = sb.execute(program)
    assert v.status == status and reason in v.reason, v


@needs_bwrap
def test_verdicts_are_cached_by_program_and_a_repeated_program_runs_once(sb):
    s = Sandbox(LIMITS, workers=2)
    progs = ["assert 2 + 2 == 4\n", "assert 2 + 2 == 5\n", "assert 2 + 2 == 4\n"]
    verdicts = s.run_many(progs)
    assert [v.status for v in verdicts] == ["passed", "failed", "passed"]
    assert s.runs == 2
    assert s.run("assert 2 + 2 == 5\n") == verdicts[1] and s.runs == 2


@needs_bwrap
def test_the_pool_runs_programs_side_by_side():
    s = Sandbox(SandboxLimits(timeout=10.0), workers=3)
    progs = [f"import time\ntime.sleep(2.0)\nassert {i} >= 0\n" for i in range(3)]
    t0 = time.monotonic()
    assert all(v.passed for v in s.run_many(progs))
    assert time.monotonic() - t0 < 5.0  # one after the other: > 6 s of sleeping alone


@needs_bwrap
def test_a_sandbox_that_cannot_set_itself_up_is_an_error_not_a_fail(monkeypatch):
    monkeypatch.setattr(sandbox_mod, "no_fork_filter", lambda: b"\x00" * 8)  # prctl refuses it
    v = Sandbox(LIMITS).execute("assert True\n")
    assert v.status == "error" and "seccomp" in v.reason


def test_the_no_fork_filter_is_a_whole_bpf_program():
    bpf = no_fork_filter()
    if not bpf:
        pytest.skip("no seccomp table for this machine")
    assert len(bpf) % 8 == 0 and len(bpf) // 8 == 13


# ----------------------------------------------------------------------------- hostile


def hostile_cases(tmp_path, port: int) -> dict[str, tuple[str, set[str]]]:
    """name -> (program that passes only if the attack worked, allowed statuses)."""
    precious = tmp_path / "precious.txt"
    outside = tmp_path / "written-by-candidate.txt"
    in_tmp = os.path.join(tempfile.gettempdir(), f"tabom-pwned-{os.getpid()}")
    parent = os.getpid()
    fail, fail_or_timeout = {"failed"}, {"failed", "timeout"}
    return {
        "infinite loop": ("while True:\n    pass\n", {"timeout"}),
        "fork bomb": ("import os\nwhile True:\n    os.fork()\n", fail),
        "subprocess": ("import subprocess\nsubprocess.run(['true'], check=True)\n", fail),
        "memory bomb": (
            "a = []\nwhile True:\n    a.append(bytearray(50 << 20))\n",
            fail_or_timeout,
        ),
        "100 MB of output": (
            "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * (1 << 20))\n",
            fail,
        ),
        "write outside its folder": (
            f"open({str(outside)!r}, 'w').write('x')\nopen({in_tmp!r}, 'w').write('x')\n",
            fail,
        ),
        "read the parent's environment": (
            "import os\nassert os.environ.get('TABOM_TEST_SECRET') == 's3cret'\n",
            fail,
        ),
        "connect to a loopback listener": (
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).close()\n",
            fail,
        ),
        "kill its parent": (
            "import os, time\np = os.getppid()\nos.kill(p, 9)\ntime.sleep(0.3)\n"
            "try:\n    os.kill(p, 0)\nexcept ProcessLookupError:\n    pass\n"
            "else:\n    raise AssertionError('parent alive')\n",
            fail,
        ),
        "kill tabom by pid": (f"import os\nos.kill({parent}, 9)\n", fail),
        "sys.exit(0) before the tests": ("import sys\nsys.exit(0)\nassert False\n", fail),
        "os._exit(0) before the tests": ("import os\nos._exit(0)\nassert False\n", fail),
        "delete tabom's working folder": (
            f"import os, shutil\nos.remove({str(precious)!r})\nshutil.rmtree({str(tmp_path)!r})\n",
            fail,
        ),
        "read a file of the host": ("print(open('/etc/passwd').read())\n", fail),
    }


@needs_bwrap
def test_hostile_candidates_fail_and_change_nothing(sb, tmp_path, monkeypatch):
    monkeypatch.setenv("TABOM_TEST_SECRET", "s3cret")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("keep me")
    before_files = sorted(p.name for p in tmp_path.iterdir())
    before_tmp = leftovers()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.setblocking(False)
        cases = hostile_cases(tmp_path, listener.getsockname()[1])
        t0 = time.monotonic()
        verdicts = sb.run_many([prog for prog, _ in cases.values()])
        elapsed = time.monotonic() - t0
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    for (name, (_, allowed)), v in zip(cases.items(), verdicts, strict=True):
        assert v.status in allowed, (name, v)
    assert elapsed < 30, elapsed  # every run is bounded by its limits
    # nothing outside the candidates' folders changed; their folders are gone
    assert sorted(p.name for p in tmp_path.iterdir()) == before_files
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert not os.path.exists(os.path.join(tempfile.gettempdir(), f"tabom-pwned-{os.getpid()}"))
    assert leftovers() <= before_tmp
    # tabom survives and its sandbox still works
    assert sb.execute("assert True\n").passed


# ----------------------------------------------------------------------------- weak mode


@pytest.fixture
def no_bwrap(monkeypatch):
    monkeypatch.setattr(sandbox_mod.shutil, "which", lambda name: None)


def test_without_bubblewrap_code_is_refused_unless_the_weak_flag_is_given(no_bwrap):
    with pytest.raises(SandboxUnavailable, match="allow_weak_isolation=true"):
        Sandbox(LIMITS)
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        make_task("mbpp")
    task = make_task("mbpp:allow_weak_isolation=true,timeout=2")
    assert task.sandbox.mode == "weak"
    with pytest.raises(TaskSpecError, match="allow_weak_isolation"):
        make_task("mbpp:allow_weak=true")


def test_the_cli_refuses_code_tasks_without_bubblewrap_in_one_line(no_bwrap, tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "write f", "tests": "assert f() == 1"}\n')
    argv = ["distill", "--task", "code", "--prompts_file", str(data), "--keep", "verified"]
    assert main([*argv, "--output", str(tmp_path / "t.jsonl"), "--progress", "false"]) == 2
    err = capsys.readouterr().err
    assert "allow_weak_isolation=true" in err and "Traceback" not in err
    assert not (tmp_path / "t.jsonl").exists()


def test_weak_mode_still_limits_time_processes_environment_and_the_end(no_bwrap, monkeypatch):
    monkeypatch.setenv("TABOM_TEST_SECRET", "s3cret")
    s = Sandbox(LIMITS, workers=2, weak_isolation=True)
    progs = {
        "assert sum([1, 2]) == 3\n": "passed",
        "while True:\n    pass\n": "timeout",
        "import os\nwhile True:\n    os.fork()\n": "failed",
        "import os\nassert os.environ.get('TABOM_TEST_SECRET') == 's3cret'\n": "failed",
        "import sys\nsys.exit(0)\nassert False\n": "failed",
        "x = bytearray(4 << 30)\n": "failed",
    }
    got = s.run_many(list(progs))
    assert [v.status for v in got] == list(progs.values()), got
