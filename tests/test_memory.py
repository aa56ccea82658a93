"""A worker's allocator settings and release_freed, in a process started the way workers are."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from finpulse.memory import ALLOCATOR_ENV

# 1,600 heap blocks of 64 KiB (100 MiB), all freed but the last, which pins the heap's top: glibc
# keeps the freed pages resident until malloc_trim hands them back.
PROBE = """
import ctypes, json
from finpulse import memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def anon_mib():
    line = next(l for l in open("/proc/self/status") if l.startswith("RssAnon:"))
    return int(line.split()[1]) / 1024
blocks = [libc.malloc(64 << 10) for _ in range(1600)]
for b in blocks:
    ctypes.memset(b, 1, 64 << 10)
for b in blocks[:-1]:
    libc.free(b)
before = anon_mib()
released = memory.release_freed()
print(json.dumps({"before": before, "after": anon_mib(), "released": released}))
"""


def test_release_freed_hands_back_heap_pages_freed_below_a_live_block():
    env = {**os.environ, **ALLOCATOR_ENV}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60, check=True)
    seen = json.loads(out.stdout)
    assert seen["released"] is True
    assert seen["before"] - seen["after"] > 80, seen  # of the 100 MiB freed, nearly all goes back
