"""Process set-up for running models: glibc keeps freed memory instead of page-faulting it in on every pass."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fsdistill import runtime

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Rounds of "forward passes" that allocate and free ~8 MB each; prints the minor page faults of two rounds.
_PASSES = textwrap.dedent(
    """
    import resource, torch
    torch.set_num_threads(1)
    from fsdistill import runtime
    assert runtime.retain_freed_memory()
    x = torch.randn(1, 3, 256, 256)
    weight = torch.ones(8, 3, 3, 3)
    def faults_of_a_round():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            maps = [torch.nn.functional.conv2d(x, weight, padding=1) * 2 for _ in range(4)]
            del maps
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    faults_of_a_round(), faults_of_a_round()  # warm-up: one-time allocations (oneDNN kernels, thread pools)
    # The quietest of three warm rounds: a lone late one-time allocation (about 1 in 5 runs faulted 512 pages
    # in one round) is not memory that failed to be reused.
    steady = min(faults_of_a_round() for _ in range(3))
    runtime.release_freed_memory()  # give the freed memory back: the next round must fault it in again
    print(steady, faults_of_a_round())
    """
)


@pytest.mark.skipif(not GLIBC, reason="mallopt is a glibc function")
def test_retained_memory_is_reused_without_page_faults() -> None:
    """Once warm, a round reuses the memory it freed and faults almost no page in; after malloc_trim hands that
    memory back, a round faults thousands of pages in again.

    (Without the setting, whether a later round faults again depends on glibc's adaptive thresholds and on what
    else sits on the heap: 6.5 k faults in a lone run, none inside the test suite, so only this side is tested;
    the speed it buys is measured by benchmarks/predict_throughput.py.)
    """
    done = subprocess.run([sys.executable, "-c", _PASSES], capture_output=True, text=True, timeout=120, check=True)
    steady, after_trim = map(int, done.stdout.split()[-2:])
    assert after_trim > 1000  # the count sees memory that was handed back (the check is not vacuous)
    assert steady < after_trim / 10


@pytest.mark.skipif(not GLIBC, reason="mallopt is a glibc function")
def test_retain_freed_memory_is_idempotent(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "_retaining", False)
    assert runtime.retain_freed_memory() and runtime._retaining
    assert runtime.retain_freed_memory()


def test_the_set_up_is_explicit_where_models_start_running(monkeypatch, tmp_path, tiny_binary_run) -> None:
    """The CLI's model commands and a Predictor set the process up; resolving a device and check do not."""
    from typer.testing import CliRunner

    from fsdistill.cli import app
    from fsdistill.infer import predictor
    from fsdistill.models.build import load_model

    calls: list[str] = []
    monkeypatch.setattr(runtime, "retain_freed_memory", lambda: calls.append("cli") or True)
    monkeypatch.setattr(runtime, "flush_denormals", lambda: calls.append("cli flush") or True)
    monkeypatch.setattr(predictor, "retain_freed_memory", lambda: calls.append("predictor") or True)
    runtime.resolve_device("cpu")
    CliRunner().invoke(app, ["check", str(tmp_path)])
    assert calls == []  # no hidden side effect in resolve_device; check runs no model
    args = ["evaluate", str(tmp_path), "--model", str(tmp_path / "no-run"), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    # set up before the command's own work (and its errors)
    assert result.exit_code == 2 and calls == ["cli", "cli flush"]
    predictor.Predictor(load_model(tiny_binary_run.run_dir), torch.device("cpu"))
    assert calls == ["cli", "cli flush", "predictor"]


def test_training_flushes_denormals_from_its_start(monkeypatch, tiny_data, tmp_path) -> None:
    """api.adapt and api.distill flush denormals before they load anything (for Python users; the CLI did)."""
    from fsdistill import api
    from fsdistill.api import training
    from fsdistill.config import AdaptCfg, DistillCfg

    calls: list[str] = []
    monkeypatch.setattr(training, "flush_denormals", lambda: calls.append("flush") or True)
    monkeypatch.setattr(training, "discover", lambda root: calls.append("discover") or 1 / 0)
    for run, cfg in (
        (api.adapt, AdaptCfg(support=tiny_data.binary, out=tmp_path / "a")),
        (api.distill, DistillCfg(support=tiny_data.binary)),
    ):
        with pytest.raises(ZeroDivisionError):
            run(cfg, quiet=True)
    assert calls == ["flush", "discover"] * 2


def test_retain_freed_memory_can_be_switched_off(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "_retaining", False)
    monkeypatch.setenv("FSDISTILL_RETAIN_MEMORY", "0")
    assert runtime.retain_freed_memory() is False
    assert not runtime._retaining


def test_write_atomic_replaces_whole_and_leaves_nothing_when_it_fails(tmp_path, monkeypatch) -> None:
    """write_atomic swaps the file in one rename; a write that fails keeps the old file and leaves no hidden
    temporary file behind."""
    target = tmp_path / "table.csv"
    runtime.write_atomic(target, "old\n")
    assert runtime.write_atomic(target, b"new\n") == target and target.read_text() == "new\n"

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runtime.os, "replace", full_disk)
    for unique in (False, True):
        with pytest.raises(OSError, match="No space"):
            runtime.write_atomic(target, "lost\n", unique=unique)
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_write_atomic_writes_through_a_symlink_and_into_a_stream(tmp_path) -> None:
    """--json link.json replaced the link by a file (its target untouched); --json /dev/stdout renamed a file over
    /dev/stdout (as root: the machine's /dev/stdout gone); --json >(jq .) was "Cannot write to /dev/fd"."""
    import os

    real, link = tmp_path / "real.json", tmp_path / "link.json"
    real.write_text("{}")
    link.symlink_to(real.name)
    runtime.write_atomic(link, "new\n")
    assert link.is_symlink() and real.read_text() == "new\n"
    assert runtime.ensure_writable_file(link, "--json", "r.json") == link

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    assert runtime.is_stream(fifo) and runtime.ensure_writable_file(fifo, "--json", "r.json") == fifo
    runtime.write_atomic(fifo, "through the pipe\n")
    reader.join(10)
    assert received == [b"through the pipe\n"] and fifo.is_fifo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "pipe", "real.json"]
    assert runtime.is_stream(Path(os.devnull)) and not runtime.is_stream(real) and not runtime.is_stream(tmp_path)


def test_dev_stdout_redirected_into_a_file_keeps_what_the_file_held(tmp_path) -> None:
    """--json /dev/stdout >> run.log renamed a file over run.log (the earlier lines and the summary lost)."""
    log = tmp_path / "run.log"
    log.write_text("earlier\n")
    script = "from pathlib import Path; from fsdistill import runtime; print('summary'); "
    script += "runtime.write_atomic(Path('/dev/stdout'), '{}\\n')"
    with open(log, "a") as out:
        subprocess.run([sys.executable, "-c", script], stdout=out, check=True)
    assert log.read_text() == "earlier\nsummary\n{}\n"


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm here")
def test_a_regular_file_under_dev_is_replaced_not_appended_to(tmp_path) -> None:
    """Every path under /dev was taken for a stream: files on /dev/shm (a tmpfs) were appended to, masks and
    predictions.csv doubled and config.resolved.yaml listed its keys twice."""
    import os

    target = Path("/dev/shm") / f"fsdistill-test-{os.getpid()}.json"
    link = target.with_suffix(".link")
    try:
        target.write_text("old")
        link.symlink_to(target)  # a link under /dev to an ordinary file: written through, not appended to
        assert not runtime.is_stream(target) and not runtime.is_stream(link)
        runtime.write_atomic(target, "new")
        runtime.write_atomic(link, "newer")
        assert target.read_text() == "newer" and link.is_symlink()
    finally:
        target.unlink(missing_ok=True)
        link.unlink(missing_ok=True)
    assert runtime.is_stream(Path("/dev/stdout")) or not Path("/dev/stdout").exists()


def _flushed() -> bool:
    """Whether arithmetic on this thread flushes a denormal float32 (1e-39) to zero now."""
    return float(torch.tensor([1e-39]) * 1.0) == 0.0


def test_flush_denormals_flushes_from_then_on_unless_switched_off(monkeypatch) -> None:
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    try:
        monkeypatch.setenv("FSDISTILL_FLUSH_DENORMALS", "0")
        assert runtime.flush_denormals() is False and not _flushed()
        monkeypatch.delenv("FSDISTILL_FLUSH_DENORMALS")
        assert runtime.flush_denormals() is True and _flushed()
    finally:
        torch.set_flush_denormal(False)


def test_numpy_does_not_warn_about_its_float_limits_after_flush_denormals() -> None:
    """numpy's first look at its float limits warns when denormals flush by then (matplotlib, scipy... ask)."""
    code = "from fsdistill.runtime import flush_denormals; import numpy; flush_denormals(); numpy.finfo('float32')"
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_threads_started_after_flush_denormals_flush_too() -> None:
    """Why the CLI calls it before any model runs: a thread takes the floating-point mode of the thread that
    starts it."""
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    seen = []
    try:
        runtime.flush_denormals()
        worker = threading.Thread(target=lambda: seen.append(_flushed()))
        worker.start()
        worker.join()
    finally:
        torch.set_flush_denormal(False)
    assert seen == [True]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n", True),
        ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n", True),
        ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw\n", False),
        ("processor\t: 0\nFeatures\t: fp asimd\n", False),
    ],
    ids=["amx", "avx512-bf16", "avx512-without-bf16", "no-flags-line"],
)
def test_cpu_computes_bfloat16_reads_the_cpu_flags(tmp_path, text, expected) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    assert runtime.cpu_computes_bfloat16(cpuinfo) is expected
    assert runtime.cpu_computes_bfloat16(tmp_path / "missing") is False  # unreadable: float32, the safe choice


def test_training_dtype_resolves_auto_from_the_hardware(monkeypatch) -> None:
    """float32 and bfloat16 are taken as asked (bfloat16 on CUDA and the CPU only); auto is bfloat16 only where
    the device computes it in hardware."""
    from fsdistill.errors import DeviceError

    cpu = torch.device("cpu")
    assert runtime.training_dtype("float32", cpu) == torch.float32
    assert runtime.training_dtype("bfloat16", cpu) == torch.bfloat16
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(runtime, "cpu_computes_bfloat16", lambda native=native: native)
        assert runtime.training_dtype("auto", cpu) == expected
    assert runtime.training_dtype("auto", torch.device("mps")) == torch.float32
    asked = []  # CUDA: bfloat16 only where the GPU computes it, not where torch emulates it (before Ampere)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(including_emulation)
    )
    assert runtime.training_dtype("auto", torch.device("cuda")) == torch.float32 and asked == [False]
    with pytest.raises(DeviceError, match="precision float32"):
        runtime.training_dtype("bfloat16", torch.device("mps"))


def test_mixed_precision_runs_convolutions_in_bfloat16_with_each_steps_weights() -> None:
    """Inside the context a convolution computes in bfloat16; entered once per step, each step's forward sees the
    weights the previous step's update left (float32 weights, bfloat16 copies made anew), and float32 is no
    context at all."""
    cpu = torch.device("cpu")
    conv = torch.nn.Conv2d(2, 2, 3)
    x = torch.randn(1, 2, 8, 8)
    optimizer = torch.optim.SGD(conv.parameters(), lr=0.5)
    for _ in range(2):
        with runtime.mixed_precision(cpu, torch.bfloat16):
            y = conv(x)
        assert y.dtype == torch.bfloat16 and conv.weight.dtype == torch.float32
        expected = F.conv2d(x.bfloat16(), conv.weight.detach().bfloat16(), conv.bias.detach().bfloat16())
        torch.testing.assert_close(y.detach(), expected)
        optimizer.zero_grad()
        y.float().square().mean().backward()
        optimizer.step()
    with runtime.mixed_precision(cpu, torch.float32):
        assert conv(x).dtype == torch.float32


def test_training_layout_is_channels_last_on_the_cpu_only_and_restored() -> None:
    """Weights are channels-last inside the context on the CPU and contiguous again after it, an error included;
    on another device nothing changes."""
    conv, other = torch.nn.Conv2d(4, 4, 3), torch.nn.Conv2d(4, 4, 1)
    with runtime.training_layout(torch.device("cpu"), conv, None, other):
        assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in (conv, other))
        assert not conv.weight.is_contiguous()
    assert conv.weight.is_contiguous() and other.weight.is_contiguous()
    with pytest.raises(RuntimeError, match="boom"):
        with runtime.training_layout(torch.device("cpu"), conv):
            raise RuntimeError("boom")
    assert conv.weight.is_contiguous()
    with runtime.training_layout(torch.device("cuda"), conv):  # a device object needs no GPU to exist
        assert conv.weight.is_contiguous()


def test_cuda_device_names_are_checked_before_torch_sees_them(monkeypatch) -> None:
    """--device cuda:x (or cuda:-1, 'cuda: 0') was torch's "Invalid device string" traceback on a CUDA machine, and
    cuda:1 on a one-GPU machine failed later inside torch."""
    from fsdistill.errors import DeviceError

    for name in ("cuda:x", "cuda:-1", "cuda: 0"):
        with pytest.raises(DeviceError, match=r"Unknown device .*or cuda:N"):
            runtime.check_device_name(name)
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runtime.torch.cuda, "device_count", lambda: 1)
    assert runtime.resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(DeviceError, match=r"--device cuda:1 names GPU 1, but this machine has 1 \(cuda:0 to cuda:0\)"):
        runtime.resolve_device("cuda:1")
