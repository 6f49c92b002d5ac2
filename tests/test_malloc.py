"""The `seqbert` command's allocator switch (seqbert/malloc.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from seqbert.malloc import ENV, mimalloc_library, preload_environment

LIB = Path("/site/cmeel.prefix/lib/libmimalloc.so")


def test_preload_environment_adds_the_library_once_and_keeps_other_preloads():
    env = preload_environment({"PATH": "/bin"}, LIB)
    assert env == {"PATH": "/bin", "LD_PRELOAD": str(LIB)}
    env = preload_environment({"LD_PRELOAD": "/x/libfoo.so"}, LIB)
    assert env["LD_PRELOAD"] == f"{LIB}:/x/libfoo.so"
    assert preload_environment(env, LIB) is None  # already preloaded: the re-executed process runs on


def test_preload_environment_respects_system_and_a_missing_library():
    assert preload_environment({ENV: "system"}, LIB) is None
    assert preload_environment({}, None) is None
    with pytest.raises(ValueError, match=f"{ENV} must be one of .*'jemalloc'"):
        preload_environment({ENV: "jemalloc"}, LIB)


def _seqbert(*argv: str, **env: str) -> subprocess.CompletedProcess:
    """Run the installed console script's entry point, as `seqbert ARGV` would."""
    code = (
        "import sys; from seqbert.malloc import main; sys.argv = ['seqbert', *sys.argv[1:]]; sys.exit(main())"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env={**os.environ, **env},
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip


@pytest.mark.skipif(mimalloc_library() is None, reason="cmeel-mimalloc not installed (or not Linux)")
def test_the_command_runs_under_mimalloc_unless_told_otherwise():
    env = {"LD_PRELOAD": ""}
    proc = _seqbert("--version", **env)
    assert proc.returncode == 0, proc.stderr
    assert "(allocator: mimalloc)" in proc.stdout
    proc = _seqbert("--version", **env, **{ENV: "system"})
    assert proc.returncode == 0 and "(allocator: system)" in proc.stdout


def test_a_bad_allocator_choice_is_one_line_and_exit_2():
    proc = _seqbert("--version", **{ENV: "tcmalloc"})
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seqbert: error: SEQBERT_ALLOCATOR must be one of"), (
        proc.stderr
    )
