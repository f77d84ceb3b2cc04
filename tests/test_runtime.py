"""Process set-up for running models: glibc keeps freed memory instead of page-faulting it in on every pass."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from fsdistill import runtime

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Repeated "forward passes" that allocate and free ~8 MB, counting the minor page faults of the second round.
_PASSES = textwrap.dedent(
    """
    import resource, sys, torch
    torch.set_num_threads(1)
    from fsdistill import runtime
    if sys.argv[1] == "on":
        assert runtime.retain_freed_memory()
    x = torch.randn(1, 3, 256, 256)
    weight = torch.ones(8, 3, 3, 3)
    def passes():
        for _ in range(3):
            maps = [torch.nn.functional.conv2d(x, weight, padding=1) * 2 for _ in range(4)]
            del maps
    passes()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    passes()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _second_round_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _PASSES, mode], capture_output=True, text=True, timeout=120, check=True)
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="M_TOP_PAD is a glibc setting")
def test_retained_memory_is_reused_without_page_faults() -> None:
    """Without the setting every pass faults its activations in again (~2 k pages here); with it, almost none."""
    default, retained = _second_round_faults("off"), _second_round_faults("on")
    assert default > 1000
    assert retained < default / 10


@pytest.mark.skipif(not GLIBC, reason="M_TOP_PAD is a glibc setting")
def test_retain_freed_memory_is_idempotent_and_resolve_device_applies_it(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "_retaining", False)
    runtime.resolve_device("cpu")
    assert runtime._retaining
    assert runtime.retain_freed_memory() and runtime.retain_freed_memory()


def test_retain_freed_memory_can_be_switched_off(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "_retaining", False)
    monkeypatch.setenv("FSDISTILL_RETAIN_MEMORY", "0")
    assert runtime.retain_freed_memory() is False
    assert not runtime._retaining
