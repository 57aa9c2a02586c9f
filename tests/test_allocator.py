"""Tests for distill_lib.allocator: importing the package keeps freed large buffers in the process (tuned), the
environment switch and the user's own glibc variables leave glibc's defaults alone."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A 256 MiB buffer is allocated, touched and freed; the child prints what tune() did and its resident MiB after.
CHILD = """
import distill_lib, torch
from distill_lib import allocator
x = torch.ones(64 << 20); del x
rss = int(open('/proc/self/statm').read().split()[1]) * 4096 >> 20
print(allocator.state, '|', rss)
"""


def run_child(**env) -> tuple[str, int]:
    environ = {k: v for k, v in os.environ.items() if k not in ("DISTILL_MALLOC_TUNING", "MALLOC_MMAP_THRESHOLD_",
                                                               "MALLOC_TRIM_THRESHOLD_")}
    environ.update(env, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", CHILD], env=environ, capture_output=True, text=True, check=True,
                         cwd=REPO).stdout.strip().splitlines()[-1]
    state, rss = out.split(" | ")
    return state, int(rss)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator tuning is Linux-only")
def test_tuned_import_keeps_freed_buffers_and_switches_leave_defaults():
    tuned_state, tuned_rss = run_child()
    default_state, default_rss = run_child(DISTILL_MALLOC_TUNING="0")
    user_state, _ = run_child(MALLOC_MMAP_THRESHOLD_="65536")
    if tuned_state.startswith("not glibc"):
        pytest.skip("not glibc")
    assert tuned_state.startswith("tuned") and default_state.startswith("glibc defaults")
    assert user_state == "the user's MALLOC_MMAP_THRESHOLD_=65536"
    # glibc's default mmaps the 256 MiB buffer and unmaps it on free; tuned, it stays in the heap for reuse.
    assert tuned_rss - default_rss > 200, (tuned_rss, default_rss)
