"""What several benchmarks (and tests) share: the machine's description, percentiles, results
files, starting and calling the app, hostile files, and the models they time."""

from __future__ import annotations

import io
import json
import os
import platform
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from captioner.encoders import build_encoder
from captioner.model import DEFAULT_CHECKPOINT, Captioner
from captioner.network import CaptionerConfig

# where results go: benchmarks/results (the README quotes them), or $CAPTIONER_BENCH_RESULTS (smoke tests)
RESULTS = Path(os.environ.get("CAPTIONER_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))
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
    from lstmkit.devices import cpu_info

    cores = os.cpu_count() or 1
    used = min(cores, torch.get_num_threads())
    return {
        "cpu_numerics": cpu_info(),  # the flags that decide bf16, and what auto chose here
        "cpu": model, "cores": cores, "mhz": mhz, "torch_threads": torch.get_num_threads(),
        "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
        "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": _onnxruntime_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # AVX-512 BF16: one 512-bit VDPBF16PS (32 bf16 products + 32 adds) per cycle per core,
        # on the cores torch uses
        "bf16_peak_gflops_theoretical": round(used * (mhz or 0) * 1e6 * 64 / 1e9, 1) if mhz else None,
    }


def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    at = lambda q: ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]  # noqa: E731
    return {"p50": at(0.5), "p95": at(0.95), "mean": statistics.fmean(ordered), "n": len(ordered)}


def load_average() -> list[float]:
    """The machine's load average over 1, 5 and 15 minutes (``uptime``'s): on 2 cores, above
    about 1 means something else is running beside a benchmark."""
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


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
    from lstmkit.checkpoint import atomic_write_text

    path = path or RESULTS / f"{name}{name_suffix}.json"
    results = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **results}
    atomic_write_text(path, json.dumps(results, indent=2))
    return path


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise SystemExit(f"error: {what} not found at {path} (set CAPTIONER_SHARED_DATA)")
    return path


# ------------------------------------------------------------------ the app on loopback

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, batching: bool, env: dict | None = None, args: list[str] = (),
              tree: Path = ROOT) -> subprocess.Popen:
    """``python app.py`` of ``tree`` (default this checkout) on ``port``, once it answers."""
    env = {**os.environ, "CAPTIONER_BATCHING": "1" if batching else "0", "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *args], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc.startup_seconds = wait_until_up(f"http://127.0.0.1:{port}", proc)
    return proc


def wait_until_up(base: str, proc: subprocess.Popen, timeout: float = 90.0) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(base + "/", timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the app did not answer within {timeout} s")


def upload(client: httpx.Client, base: str, path: Path) -> str:
    with open(path, "rb") as f:
        r = client.post(base + "/gradio_api/upload", files={"files": (path.name, f, "image/jpeg")})
    r.raise_for_status()
    return r.json()[0]


def call(client: httpx.Client, base: str, endpoint: str, data: list) -> tuple[str, object]:
    """One API call: (event, payload), event 'complete' or 'error'."""
    r = client.post(f"{base}/gradio_api/call/{endpoint}", json={"data": data})
    if r.status_code != 200:  # e.g. 503 when the queue is full
        return f"http-{r.status_code}", r.text
    event_id = r.json()["event_id"]
    event = None
    with client.stream("GET", f"{base}/gradio_api/call/{endpoint}/{event_id}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                payload = line.split(":", 1)[1].strip()
                return event, json.loads(payload) if payload and payload != "null" else None
    return "closed", None


# --------------------------------------------------------------------- hostile files

PHOTO = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A real, valid 30000x30000 grey PNG of zeros: under a megabyte on disk, 900 MB decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor, parts, row = zlib.compressobj(9), [], b"\0" * (width + 1)
    for _ in range(height // 100):
        parts.append(compressor.compress(row * 100))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


# ----------------------------------------------------------------- models to time

def load_model(name: str) -> tuple[Captioner, torch.nn.Module, str]:
    """The captioner to time, the textbook's backbone (the same weights as plain float32
    eager modules: no BatchNorm folding, no bf16, no channels_last), and where the weights
    come from. Lite0 is the shipped captioner. ResNet-152 has no ImageNet weights on this
    machine: it gets random weights, a random projection and the shipped model's trained
    LSTM decoder, so captions end when a trained decoder ends them."""
    if name == "efficientnet_lite0" and DEFAULT_CHECKPOINT.is_file():
        model = Captioner.from_checkpoint(DEFAULT_CHECKPOINT)
        return model, build_encoder(name, optimize=False).backbone.eval(), "shipped captioner"
    torch.manual_seed(0)
    encoder = build_encoder(name, weights="random")
    torch.manual_seed(0)
    plain = build_encoder(name, weights="random", optimize=False).backbone.eval()
    shipped = None
    if DEFAULT_CHECKPOINT.is_file():
        shipped = Captioner.from_checkpoint(DEFAULT_CHECKPOINT, load_encoder=False)
    if shipped is None:
        from captioner.vocabulary import Vocabulary

        vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *[f"w{i}" for i in range(3000)]])
        base = CaptionerConfig()
    else:
        vocab, base = shipped.vocab, shipped.config
    # the shipped decoder's kind and sizes, without what needs the ImageNet classifier the random
    # CNN lacks (object slots, concepts, familiarity)
    config = replace(base, encoder=name, feature_dim=encoder.feature_dim, vocab_size=len(vocab), object_slots=0,
                     object_words=0, concepts=0, familiarity_dim=0, familiarity_references=0,
                     familiarity_calibration=0, familiarity_worlds=0, detector=0, regions=0)
    model = Captioner(config, vocab, encoder).eval()
    if shipped is None:
        return model, plain, "random weights, random decoder"
    trained = {k: v.float() for k, v in shipped.network.decoder.state_dict().items() if not k.startswith("slots.")}
    model.network.decoder.load_state_dict(trained)
    return model, plain, (f"random CNN weights and projections, the shipped {base.decoder} LSTM decoder without its "
                          "object slots")


# ------------------------------------------------- the fake camera (live mode)

EXAMPLES = ROOT / "webapp" / "examples"  # the caption tab's example photos


def letterboxed(path: Path, width: int, height: int) -> Image.Image:
    """The photo whole, as large as fits ``width`` x ``height``, on black."""
    photo = Image.open(path).convert("RGB")
    photo.thumbnail((width, height), Image.Resampling.LANCZOS)
    frame = Image.new("RGB", (width, height))
    frame.paste(photo, ((width - photo.width) // 2, (height - photo.height) // 2))
    return frame


def yuv420(frame: Image.Image) -> bytes:
    """One frame as planar Y, U, V (BT.601, full range as Chromium's reader takes it), the
    chroma planes at half resolution."""
    y, u, v = (np.asarray(c, dtype=np.float32) for c in frame.convert("YCbCr").split())
    half = lambda c: c.reshape(c.shape[0] // 2, 2, c.shape[1] // 2, 2).mean(axis=(1, 3))  # noqa: E731
    return b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in (y, half(u), half(v)))


def write_slideshow(out: Path, photos: list[Path] | None = None, seconds: float = 4.0, fps: int = 5,
                    size: tuple[int, int] = (480, 360)) -> Path:
    """Write ``photos`` (default: the app's examples) as a Y4M slideshow to ``out``."""
    photos = photos or sorted(EXAMPLES.glob("*.jpg"))
    width, height = (s // 2 * 2 for s in size)
    repeats = max(1, round(seconds * fps))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for path in photos:
            data = yuv420(letterboxed(path, width, height))
            f.write(b"FRAME\n" + data + b"".join(b"FRAME\n" + data for _ in range(repeats - 1)))
    tmp.replace(out)
    return out
