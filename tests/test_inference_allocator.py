"""release_large_blocks pins glibc's mmap threshold once per process and never fails."""

import ctypes

import pytest

from vaekit.inference import allocator


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(allocator, "_RELEASED", False)
    libc = FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    return libc


def test_sets_the_mmap_threshold_to_128_kib_once(fresh):
    allocator.release_large_blocks()
    allocator.release_large_blocks()
    assert fresh.calls == [(-3, 128 * 1024)]  # M_MMAP_THRESHOLD, glibc's default starting value
    assert allocator._RELEASED


def test_no_mallopt_is_not_an_error(monkeypatch):
    monkeypatch.setattr(allocator, "_RELEASED", False)

    def no_libc(name):
        raise OSError("no C library")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    allocator.release_large_blocks()  # returns quietly
    monkeypatch.setattr(allocator, "_RELEASED", False)
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())  # a libc without mallopt
    allocator.release_large_blocks()
    assert allocator._RELEASED


def test_the_real_libc_accepts_it(monkeypatch):
    monkeypatch.setattr(allocator, "_RELEASED", False)
    allocator.release_large_blocks()  # on glibc this calls the real mallopt; elsewhere a no-op
    assert allocator._RELEASED
    assert allocator.M_MMAP_THRESHOLD == -3 and allocator.MMAP_THRESHOLD_BYTES == 128 << 10
