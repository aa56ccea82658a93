"""A worker process's memory allocators: how they are set up, and handing freed memory back.

What a worker's memory goes to, and what each setting saved, is in docs/performance.md (Performance,
Memory); the other bounds are librdkafka's prefetch (topic.PREFETCH) and the in-flight limit.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

# Set in a worker's environment as it starts, unless the environment names its own.
# - MALLOC_ARENA_MAX: glibc gives each thread that allocates an arena of its own (up to 8 per
#   core), and a worker has many threads (librdkafka's, delta-rs's, one per lane), each arena
#   keeping what it freed.
# - MALLOC_MMAP_THRESHOLD_: glibc maps blocks above 128 KiB on their own and unmaps them when
#   freed, but raises that threshold (up to 32 MiB) each time such a block is freed; after that
#   the large buffers of a drain (COPY data, Parquet pages, fetched Kafka batches) come from the
#   heap, where freed space stays behind live blocks. A fixed threshold keeps them mapped apart.
# - ARROW_DEFAULT_MEMORY_POOL: Arrow's default jemalloc pool keeps freed memory for reuse; the
#   system allocator returns it.
ALLOCATOR_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(256 << 10),
    "ARROW_DEFAULT_MEMORY_POOL": "system",
}


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_freed() -> bool:
    """Hand the heap's free pages back to the system (glibc's malloc_trim). glibc returns only the
    top of its heap on its own; pages freed below a block still in use stay resident, so after a
    burst a long-running worker would keep its peak for good. Costs about a millisecond; the
    worker calls it once a second. True if any memory was released."""
    return bool(_TRIM(0)) if _TRIM is not None else False
