"""The server's cap on glibc malloc arenas, checked in child processes with glibc's own report."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the arena cap applies to glibc only"
)

# Threads that allocate at the same time, so that glibc would give several of them an arena.
CHILD = textwrap.dedent(
    """
    import ctypes, sys, threading
    from corebase.server import limit_malloc_arenas

    print(limit_malloc_arenas() if sys.argv[1] == "cap" else "uncapped", flush=True)
    barrier = threading.Barrier(16)

    def allocate():
        barrier.wait()
        kept = [bytearray(4096) for _ in range(2000)]
        barrier.wait()

    threads = [threading.Thread(target=allocate) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ctypes.CDLL("libc.so.6").malloc_stats()
    """
)


def run_child(mode: str, **environment: str) -> tuple[str, int]:
    """Run CHILD; return what it printed and the number of arenas glibc reported."""
    env = {name: value for name, value in os.environ.items() if name != "MALLOC_ARENA_MAX"} | environment
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=60, env=env, check=True
    )
    arenas = sum(1 for line in result.stderr.splitlines() if line.startswith("Arena "))
    return result.stdout.strip(), arenas


def test_cap_keeps_threads_to_two_arenas() -> None:
    printed, arenas = run_child("cap")
    assert printed == "True"
    assert arenas <= 2


def test_threads_get_more_arenas_without_the_cap() -> None:
    # The check above means something only if these threads would otherwise spread out.
    printed, arenas = run_child("none")
    assert printed == "uncapped"
    assert arenas > 2


def test_environment_setting_wins() -> None:
    assert run_child("cap", MALLOC_ARENA_MAX="3")[0] == "False"
