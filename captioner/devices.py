"""Which device runs the models, and in which precision.

``--device auto`` (the default everywhere) takes a CUDA GPU, then Apple's MPS, then the
CPU. A device that was asked for but is not there ends in one sentence that says what
there is instead (``DeviceError``).

Precision: frozen encoders compute in bf16 where the device has fast bf16 (CUDA GPUs
from Ampere on, CPUs with AVX512-BF16 or AMX) and in float32 elsewhere (MPS included:
its bf16 support depends on the macOS version). The trained decoder always runs in
float32: its many small steps gain nothing from half precision and beam search compares
log-probabilities that differ in the fourth digit.
"""

from __future__ import annotations

import torch


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


def fast_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matrix products are native (fast) on this device."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for honest timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
