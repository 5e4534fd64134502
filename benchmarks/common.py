"""Helpers for the benchmarks: the machine's description, percentiles, results files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
SHARED = Path(os.environ.get("CAPTIONER_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def machine() -> dict:
    model, mhz, flags = "unknown", None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                model = value.strip()
            elif key == "cpu MHz" and mhz is None:
                mhz = float(value)
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    cores = os.cpu_count() or 1
    used = min(cores, torch.get_num_threads())
    return {
        "cpu": model, "cores": cores, "mhz": mhz, "torch_threads": torch.get_num_threads(),
        "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
        "python": platform.python_version(), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # AVX-512 BF16: one 512-bit VDPBF16PS (32 bf16 products + 32 adds) per cycle per core,
        # on the cores torch uses
        "bf16_peak_gflops_theoretical": round(used * (mhz or 0) * 1e6 * 64 / 1e9, 1) if mhz else None,
    }


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    at = lambda q: ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]  # noqa: E731
    return {"p50": at(0.5), "p95": at(0.95), "mean": statistics.fmean(ordered), "n": len(ordered)}


def run_threads(target, args_list: list[tuple]) -> float:
    """Run ``target(*args)`` for each ``args``, every call in its own thread at once; returns the seconds taken."""
    threads = [threading.Thread(target=target, args=args) for args in args_list]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def write_results(name: str, results: dict, path: Path | None = None, name_suffix: str = "") -> Path:
    """``benchmarks/results/<name><name_suffix>.json``, with the machine described (its GPU
    too, where there is one)."""
    from captioner.checkpoint import atomic_write_text

    path = path or RESULTS / f"{name}{name_suffix}.json"
    results = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **results}
    atomic_write_text(path, json.dumps(results, indent=2))
    return path


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise SystemExit(f"error: {what} not found at {path} (set CAPTIONER_SHARED_DATA)")
    return path
