"""The `seqbert` command runs under mimalloc (Linux, when the `cmeel-mimalloc` wheel is installed).

Why: CPU training makes tensors whose sizes change every step (length-bucketed batches, a varying number of
labelled positions), and every evaluation makes another set. glibc's malloc keeps the freed blocks in its
heaps (one heap per thread that ever allocated), fragmented, so resident memory climbs over a run although
the live tensors of a 64-wide model are a few hundred MB: SASRec+ on ML-1M, 2 threads, peaked at 2.6 GB in
10 minutes. mimalloc returns freed pages to the OS as it goes (benchmarks/RESULTS.md, "Peak RSS").

How: an allocator must be in place before the process's first allocation, so the `seqbert` command's entry
point (`main` here, before torch is imported) re-executes the same command once as `python -m seqbert.cli`
with mimalloc in `LD_PRELOAD` (a process-wide switch no Python code can make later). Set
`SEQBERT_ALLOCATOR=system` to keep the platform's malloc. For a Python program using the library, the same
effect is `LD_PRELOAD=$(python -m seqbert.malloc) python script.py`.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

ENV = "SEQBERT_ALLOCATOR"  # "mimalloc" (the default where available) or "system"
CHOICES = ("mimalloc", "system")
LIBRARY = "libmimalloc.so"


def mimalloc_library() -> Path | None:
    """The shared library of the installed `cmeel-mimalloc` wheel, or None (not installed / not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        files = metadata.distribution("cmeel-mimalloc").files or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == LIBRARY:
            path = Path(str(f.locate()))
            return path if path.is_file() else None
    return None


def active_allocator() -> str:
    """'mimalloc' if this process runs under it (its library is mapped), else 'system'."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "mimalloc" if "libmimalloc" in maps else "system"


def preload_environment(environ: dict[str, str], library: Path | None) -> dict[str, str] | None:
    """The environment to re-execute under mimalloc with, or None to run as we are.

    None when the user chose "system", when no library is installed, or when it is already preloaded (so the
    re-executed process never re-executes again). A value of SEQBERT_ALLOCATOR other than CHOICES is an error.
    """
    choice = environ.get(ENV, "mimalloc")
    if choice not in CHOICES:
        raise ValueError(f"{ENV} must be one of {CHOICES}, got {choice!r}")
    if choice == "system" or library is None:
        return None
    preload = environ.get("LD_PRELOAD", "")
    if "libmimalloc" in preload:
        return None
    env = dict(environ)
    env["LD_PRELOAD"] = f"{library}:{preload}" if preload else str(library)
    return env


def reexec_under_mimalloc(argv: list[str]) -> None:
    """Replace this process by `python -m seqbert.cli ARGV` under mimalloc, or return (see the module doc)."""
    env = preload_environment(dict(os.environ), mimalloc_library())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "seqbert.cli", *argv], env)


def main() -> int:
    """The `seqbert` command: re-executed under mimalloc when available, then `seqbert.cli.main`."""
    try:
        reexec_under_mimalloc(sys.argv[1:])
    except ValueError as e:
        sys.stderr.write(f"seqbert: error: {e}\n")
        return 2
    from seqbert.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    library = mimalloc_library()
    if library is None:
        sys.exit("cmeel-mimalloc is not installed (or this is not Linux)")
    print(library)
