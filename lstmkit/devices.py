"""Which device runs the models, and in which precision.

``--device auto`` (the default everywhere) takes a CUDA GPU, then Apple's MPS, then the
CPU. A device that was asked for but is not there ends in one sentence that says what
there is instead (``DeviceError``).

Precision (``choose_precision``): frozen encoders compute in bf16 only where that is
faster, decided per machine and never assumed. On a CUDA GPU: bf16 where the GPU has it
(Ampere on). On MPS: float32. On a CPU: what the CPU reports first: without AVX512-BF16
or AMX (``/proc/cpuinfo``'s ``avx512_bf16``, ``amx_bf16``) bf16 is emulated and about 2x
slower than float32, so float32; with them, a short measurement (a few conv layers in
both precisions, about a second), made once and cached per machine under the user's cache
folder (``~/.cache/captioner/precision.json``, keyed by CPU model, flags and torch
version), keeps bf16 only if it is at least 10% faster; where the CPU reports nothing
(not Linux), the measurement alone decides. ``--precision fp32|bf16`` overrides it. The
trained decoder always runs in float32: its many small steps gain nothing from half
precision and beam search compares log-probabilities that differ in the fourth digit.
"""

from __future__ import annotations

import json
import logging
import os
import time
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "fp32", "bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")


class DeviceError(RuntimeError):
    """A device that was asked for and is not there; the message says what is."""


DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def describe_available() -> str:
    found = []
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        found.append(f"{n} CUDA GPU{'s' if n != 1 else ''} ({torch.cuda.get_device_name(0)})")
    if _mps_available():
        found.append("Apple's MPS")
    return " and ".join(found) + " and the CPU" if found else "only the CPU"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` -> a device that exists."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise DeviceError(f"--device {spec!r} is not a device; use {DEVICE_CHOICES}") from err
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        return _cuda(spec, device)
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError(f"--device mps asks for Apple's GPU (Metal), which this machine does not have "
                              f"(it has {describe_available()}); use --device auto")
        return device
    raise DeviceError(f"--device {spec!r} is not supported here; use {DEVICE_CHOICES}")


def _cuda(spec: str, device: torch.device) -> torch.device:
    if not torch.cuda.is_available():
        built = f"torch {torch.__version__}" + (f" built for CUDA {torch.version.cuda}" if torch.version.cuda
                                               else ", a CPU-only build")
        raise DeviceError(f"--device {spec} asks for a CUDA GPU, but {built} sees none here "
                          f"(this machine has {describe_available()}); use --device auto or cpu")
    index = 0 if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {spec} asks for GPU {index}, but this machine has "
                          f"{torch.cuda.device_count()} (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for honest timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# ------------------------------------------------------------------ precision per machine

@cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags as Linux reports them (None where it does not: macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.partition(":")[2].split())
    return None


def cpu_info() -> dict:
    """What a benchmark records beside its numbers: the CPU's model, the flags that decide
    numerics, the cores, torch's view of the CPU and the precision chosen."""
    import platform

    flags = cpu_flags()
    return {"model": cpu_info_model() or platform.processor() or platform.machine(),
            "flags": sorted(f for f in SHOWN_FLAGS if flags and f in flags) if flags is not None else None,
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": None if flags is None else bool(set(BF16_FLAGS) & flags),
            "precision_auto": "bf16" if choose_precision("cpu") == torch.bfloat16 else "fp32",
            "encoder_runtimes": runtimes_chosen()}


def _cache_file() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "captioner" / "precision.json"


def _machine_key(flags: frozenset[str] | None) -> str:
    import platform

    shown = ",".join(sorted(f for f in SHOWN_FLAGS if flags and f in flags))
    return f"{cpu_info_model()}|{platform.machine()}|{shown}|torch {torch.__version__}"


def cpu_info_model() -> str:
    """The CPU's model name as Linux reports it ("" elsewhere)."""
    try:
        return next((line.partition(":")[2].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), "")
    except OSError:
        return ""


def measure_bf16(repeats: int = 5) -> dict[str, float]:
    """Milliseconds per run of a few 3x3 conv layers (channels_last, as the encoders run)
    in float32 and in bf16 on the CPU: the median of ``repeats`` runs after two warm-ups."""
    layers = torch.nn.Sequential(*[torch.nn.Conv2d(64, 64, 3, padding=1) for _ in range(4)]).eval()
    x = torch.randn(2, 64, 56, 56).contiguous(memory_format=torch.channels_last)
    out = {}
    for name, dtype in (("fp32_ms", torch.float32), ("bf16_ms", torch.bfloat16)):
        net = __import__("copy").deepcopy(layers).to(dtype).to(memory_format=torch.channels_last)
        inp = x.to(dtype)
        with torch.inference_mode():
            out[name] = time_ms(lambda: net(inp), repeats)  # noqa: B023 - called at once
    return out


def measured(what: str, measure) -> dict[str, float]:
    """``measure()``'s figures for this machine, made once and cached (``_cache_file``, keyed by
    the CPU's model, flags and torch version, and ``what``)."""
    key = _machine_key(cpu_flags()) + ("" if what == "bf16" else f"|{what}")
    path = _cache_file()
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if key not in table:
        table[key] = measure()
        log.info("measured on this CPU (%s): %s (cached in %s)", what, table[key], path)
        try:
            from lstmkit.checkpoint import atomic_write_text

            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(table, indent=1))
        except OSError:  # a read-only home: measure again next time
            pass
    return table[key]


def _measured_bf16_faster() -> bool:
    """The cached measurement for this machine (made now if there is none)."""
    m = measured("bf16", measure_bf16)
    return m["bf16_ms"] * 1.1 <= m["fp32_ms"]


RUNTIMES = ("auto", "onednn", "torchscript", "eager")


@cache
def keep_freed_memory() -> bool:
    """Let glibc keep large freed blocks for the next tensor instead of returning each to the
    system (``mallopt``; once per process, Linux with glibc only; True if it took).

    By default every block over 128 KB is its own ``mmap`` and goes back on ``free``, so the
    next tensor of that size page-faults its memory in again, zeroed by the kernel. Measured on
    a 2-core Xeon: copying a bf16 batch of 32 maps of 96x112x112 took 21.9 ms, 8.4 ms with
    the freed memory kept (the same figure the allocators PyTorch's CPU tuning guide suggests,
    jemalloc and tcmalloc, get from caching). The process keeps its peak memory instead."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 31))
    log.debug("glibc keeps freed memory: %s", ok)
    return ok


def time_ms(run, repeats: int = 7) -> float:
    """The median milliseconds of ``repeats`` calls of ``run()`` after two warm-ups."""
    times = []
    for k in range(repeats + 2):
        start = time.perf_counter()
        run()
        if k >= 2:
            times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


def choose_runtime(name: str, dtype: torch.dtype, eager, candidates: dict, example: torch.Tensor) -> str:
    """The fastest of ``candidates`` (runtime name -> a function that builds the encoder run
    that way, or None where it cannot be) on this CPU, if it is at least 5% faster than
    ``eager``, else ``eager``. Each is timed on ``example`` (one photo) and on a batch of 8 of
    it, scored by the sum of the milliseconds per photo (an upload and a folder); measured once
    per machine, encoder, precision and set of candidates, and cached like the precision
    (``measured``): a start with the answer cached builds none of them."""
    batch = example.repeat(8, 1, 1, 1).contiguous(memory_format=torch.channels_last)

    def measure() -> dict[str, float | None]:
        times: dict[str, float | None] = {}
        with torch.inference_mode():
            for runtime, build in {"eager": lambda: eager, **candidates}.items():
                run = build()
                times[f"{runtime}_ms"] = None if run is None else time_ms(lambda run=run: run(example))
                times[f"{runtime}_batch8_ms"] = None if run is None else time_ms(lambda run=run: run(batch))
        return times

    m = measured(f"runtime {name} {str(dtype).removeprefix('torch.')} {'+'.join(sorted(candidates))}", measure)
    return _fastest(m, list(candidates))


def _fastest(m: dict[str, float | None], candidates: list[str]) -> str:
    def score(runtime: str) -> float:
        one, eight = m.get(f"{runtime}_ms"), m.get(f"{runtime}_batch8_ms")
        return float("inf") if one is None or eight is None else one + eight / 8

    best = min(candidates, key=score, default=None)
    return best if best is not None and score(best) <= 0.95 * score("eager") else "eager"


def runtimes_chosen() -> dict[str, str]:
    """What ``choose_runtime`` chose on this machine so far ("efficientnet_lite0 bfloat16" ->
    "onednn"), from the cache: what a benchmark records beside its numbers."""
    prefix = _machine_key(cpu_flags()) + "|runtime "
    try:
        table = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    chosen = {}
    for key, m in table.items():
        if key.startswith(prefix) and len(key[len(prefix):].split(" ")) == 3:
            name, dtype, candidates = key[len(prefix):].split(" ")
            chosen[f"{name} {dtype}"] = _fastest(m, candidates.split("+"))
    return chosen


def choose_precision(device: torch.device | str = "cpu", requested: str = "auto") -> torch.dtype:
    """The dtype a frozen encoder computes in on ``device``: ``requested`` when it is
    ``fp32`` or ``bf16``, else the one that is faster there (see the module docstring)."""
    if requested not in PRECISIONS:
        raise ValueError(f"--precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return torch.bfloat16 if requested == "bf16" else torch.float32
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type != "cpu":
        return torch.float32
    flags = cpu_flags()
    if flags is not None and not set(BF16_FLAGS) & flags:
        return torch.float32  # emulated bf16: slower than float32
    return torch.bfloat16 if _measured_bf16_faster() else torch.float32
