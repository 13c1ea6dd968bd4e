"""vaekit.heap: after prime(), tensors of up to ~31 MiB come from glibc's heap instead of a fresh
mapping each (which is unmapped on free, so its pages fault in again next time); after keep(),
tensors of hundreds of MiB do too; `vaekit train` keeps; a malloc setting of the user's stays as
set. glibc's own count of mapped blocks (``mallinfo2().hblks``) tells which."""

import ctypes
import json
import os
import subprocess
import sys

import pytest
from helpers import tiny_digits_vae_args

from vaekit import heap
from vaekit.cli import main

pytestmark = pytest.mark.skipif(
    not heap.is_glibc() or not hasattr(ctypes.CDLL(None), "mallinfo2"),
    reason="the thresholds primed are glibc's, and mallinfo2 (glibc 2.33) counts its mapped blocks",
)

# A child allocates tensors of growing size, 1 to 30 MiB, and records for each whether glibc served
# it with a mapping of its own. Growing sizes keep each one above the threshold that the previous
# free raised it to, so that unprimed every one is mapped: the premise the test checks first.
CHILD = """
import ctypes, json, sys
import torch
from vaekit import heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
done = {"none": lambda: None, "prime": heap.prime, "keep": heap.keep}[sys.argv[1]]()
mapped = []
for mib in map(int, sys.argv[2].split(",")):
    before = mallinfo2().hblks
    t = torch.empty(mib << 20, dtype=torch.uint8)
    mapped.append(mallinfo2().hblks - before)
    del t
print(json.dumps({"mapped": mapped, "done": done}))
"""
SMALL, LARGE = "1,4,8,16,24,30", "48,100,300"


def child(arg: str, sizes: str = SMALL, **env) -> dict:
    """The child's record; ``env`` replaces whatever malloc settings this process was given."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}, **env}
    out = subprocess.run([sys.executable, "-c", CHILD, arg, sizes], env=env, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def mapped_blocks(arg: str, sizes: str = SMALL, **env) -> list[int]:
    return child(arg, sizes, **env)["mapped"]


def test_after_priming_tensors_up_to_30_mib_come_from_the_heap():
    assert mapped_blocks("none") == [1] * 6  # the premise: unprimed, each is a mapping
    assert mapped_blocks("prime") == [0] * 6


def test_a_threshold_the_user_set_is_left_as_set():
    assert mapped_blocks("prime", MALLOC_MMAP_THRESHOLD_=str(1 << 20)) == [1] * 6


def test_keeping_serves_tensors_up_to_300_mib_from_the_heap():
    assert mapped_blocks("prime", LARGE) == [1] * 3  # the premise: above prime's ceiling, mappings
    kept = child("keep", LARGE)
    assert kept == {"mapped": [0] * 3, "done": True}


@pytest.mark.parametrize(
    "env", [{"MALLOC_TRIM_THRESHOLD_": str(1 << 20)}, {"GLIBC_TUNABLES": f"glibc.malloc.mmap_threshold={1 << 20}"}]
)
def test_keep_leaves_the_users_malloc_settings_as_set(env):
    assert child("keep", LARGE, **env) == {"mapped": [1] * 3, "done": False}


def test_vaekit_train_keeps_the_heap(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(heap, "keep", lambda: calls.append(1))
    assert main(tiny_digits_vae_args(tmp_path / "run")) == 0
    assert calls == [1]


def test_priming_happens_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "_primed", False)
    monkeypatch.setattr(heap.torch, "empty", lambda *a, **k: calls.append(a))
    heap.prime()
    heap.prime()
    assert calls == [(heap.BLOCK_BYTES,)]
