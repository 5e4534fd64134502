import contextlib
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("CAPTIONER_SHARED_DATA", ROOT.parent / "shared" / "data"))
# corrections saved by the tests' apps go to a folder of their own, never the clone's data/feedback
os.environ.setdefault("CAPTIONER_FEEDBACK_DIR", tempfile.mkdtemp(prefix="captioner-test-feedback-"))


def shared(*parts: str) -> Path:
    """A path inside ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the real data at {path} (set CAPTIONER_SHARED_DATA to its folder)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def lite0():
    """The real EfficientNet-Lite0 encoder with its packaged ImageNet weights."""
    from captioner.encoders import build_encoder

    return build_encoder("efficientnet_lite0")


from captioner.train.datasets import CaptionRecord  # noqa: E402


def flickr_sample(n_images: int, captions_per_image: int = 1):
    """The first ``n_images`` Flickr8k photos and their first captions."""
    import csv

    root = shared("flickr8k")
    with open(root / "captions.txt", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    by_image: dict[str, list[str]] = {}
    for image, caption in rows:
        by_image.setdefault(image, []).append(caption)
    names = sorted(by_image)[:n_images]
    return [(root / "Images" / n, by_image[n][:captions_per_image]) for n in names]


def memorising_captioner(lite0, **config):
    """A tiny object-aware captioner (2 object slots; familiarity references from 8 of the
    photos, calibrated on the other 4) trained in a few seconds to memorise one real caption
    of each of 12 real Flickr8k photos, from the real Lite0 encoder's features (and 7x7
    grids, for ``decoder="attention"``). Returns the model, the sample, its images, pooled
    features, grids (or None) and the memorised captions."""
    import torch

    from captioner.decoding import DecodingConfig
    from captioner.inputs import PhotoInputs
    from captioner.model import Captioner
    from captioner.network import CaptionerConfig
    from captioner.objects import slot_tokens
    from captioner.train.batches import CaptionTable
    from captioner.train.losses import caption_loss
    from captioner.vocabulary import Vocabulary
    from lstmkit.images import load_image

    sample = flickr_sample(12)
    captions = [caps[0] for _, caps in sample]
    vocab = Vocabulary.build(captions, min_count=1, extra=slot_tokens(2))
    images = [load_image(p) for p, _ in sample]
    attends = config.get("decoder") == "attention"
    batch = lite0.preprocess.batch(images)
    features, grid = lite0.encode(batch, grid=True) if attends else (lite0.encode(batch), None)
    features, grid = features.clone(), None if grid is None else grid.clone()  # out of inference mode
    torch.manual_seed(0)
    model = Captioner.new(CaptionerConfig(embed_dim=64, hidden_dim=128, dropout=0.0, object_slots=2, **config),
                          vocab, lite0, decoding=DecodingConfig(beam_size=3),
                          train_features=features[:8], held_out_features=features[8:], familiarity_dim=8)
    model.encoder = lite0
    records = [CaptionRecord(p, c) for (p, _), c in zip(sample, captions)]
    table = CaptionTable(records, [p for p, _ in sample], vocab, 30, model.detected_object_words(features))
    rows = torch.arange(len(table))
    feats, padded, lengths, grids = table.batch(rows, torch.zeros(len(rows), dtype=torch.bool), features, features,
                                                grid, grid)
    optimizer = torch.optim.Adam(model.network.parameters(), lr=1e-2)
    model.network.train()
    for _ in range(150):
        loss = caption_loss(model.network, PhotoInputs(feats, grids), padded, lengths,
                            attention_reg=1.0 if attends else 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.network.eval()
    return model, sample, images, features, grid, captions


@pytest.fixture(scope="session")
def tiny_captioner(lite0):
    """``memorising_captioner``, Show and Tell."""
    model, sample, _, features, _, captions = memorising_captioner(lite0)
    return model, sample, features, captions


CHECKPOINTS = Path(os.environ.get("CAPTIONER_CHECKPOINTS", ROOT / "checkpoints"))


def shipped(name: str) -> Path:
    """A shipped checkpoint, or skip the test."""
    path = CHECKPOINTS / name
    if not path.is_file():
        pytest.skip(f"{name} has not been trained and shipped yet")
    return path


def all_at_once(n: int, call) -> list:
    """``call(i)`` for i in 0..n-1 from n threads released together; their answers in order
    (any exception is raised here, after all have finished)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        return call(i)

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
    return [f.result() for f in futures]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(log_path: Path, cwd: Path = ROOT, bare: bool = False, **env_extra):
    """``python app.py`` in ``cwd`` on a free loopback port, as a user would start it (with
    ``env_extra`` in its environment; ``bare``: none of our CAPTIONER_ settings and no
    PYTHONPATH, as on a fresh machine): yields its URL, start-up time and process."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not bare or not k.startswith(("CAPTIONER_", "PYTHONPATH"))}
    env.update({"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", **env_extra})
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=cwd, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        start = time.time()
        while True:
            try:
                urllib.request.urlopen(base + "/", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() - start > 90:
                    proc.kill()
                    pytest.fail("the app did not start")
                time.sleep(0.2)
        try:
            yield {"url": base, "startup_seconds": time.time() - start, "process": proc}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="session")
def server():
    with running_app(ROOT / "artifacts" / "server.log") as app:
        yield app
