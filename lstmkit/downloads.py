"""Downloading the datasets, resuming interrupted downloads and checking what can be checked.
The command line is ``python -m training.download``.

COCO: the official caption annotations and image archives from images.cocodataset.org,
unpacked into ``root/annotations/captions_<split><year>.json`` and ``root/<split><year>/``,
the layout ``training.train_captioner --dataset coco --data-root root`` reads. COCO
publishes no checksums; each archive's length is checked against the server's and every
zip is tested before it is unpacked.

MNIST: the four idx files from torchvision's mirrors, checked against the MD5 sums
torchvision publishes, unpacked into ``root/MNIST/raw/`` (``torchvision.datasets.MNIST(root)``).

A download in progress lives in ``<file>.part``; run the command again after an
interruption and it continues where it stopped (HTTP Range requests).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

COCO_URL = os.environ.get("CAPTIONER_COCO_URL", "http://images.cocodataset.org")
MNIST_MIRRORS = os.environ.get(
    "CAPTIONER_MNIST_MIRRORS",
    "https://ossci-datasets.s3.amazonaws.com/mnist/ http://yann.lecun.com/exdb/mnist/").split()
# (file, md5) as torchvision.datasets.MNIST.resources publishes them
MNIST_FILES = [
    ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("t10k-images-idx3-ubyte.gz", "9646ae1f6fc7fb3a6d3bb1de8c4ec9fa"),
    ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
]
UCI_TRAJECTORIES_URL = os.environ.get(
    "CAPTIONER_TRAJECTORIES_URL", "https://archive.ics.uci.edu/static/public/175/character+trajectories.zip")
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download that failed for good; the message says which file and why."""


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(urls: str | list[str], dest: Path, md5: str | None = None, retries: int = 3,
          timeout: float = 60.0, progress: bool = True) -> Path:
    """Download to ``dest`` (first working URL), resuming ``dest.part`` if present."""
    urls = [urls] if isinstance(urls, str) else list(urls)
    if dest.exists() and (md5 is None or md5_of(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        for attempt in range(retries):
            try:
                _fetch_once(url, dest, timeout, progress)
            except urllib.error.HTTPError as err:
                errors.append(f"{url}: HTTP {err.code}")
                if 400 <= err.code < 500:
                    break  # not there: the next source, not another try
                time.sleep(min(2 ** attempt, 10) if attempt + 1 < retries else 0)
                continue
            except (urllib.error.URLError, OSError, ConnectionError, TimeoutError) as err:
                errors.append(f"{url}: {err}")
                time.sleep(min(2 ** attempt, 10) if attempt + 1 < retries else 0)
                continue
            if md5 is not None and md5_of(dest) != md5:
                dest.unlink()
                errors.append(f"{url}: checksum mismatch")
                break  # a bad file from this source; try the next one
            return dest
    raise DownloadError(f"could not download {dest.name}: " + "; ".join(errors[-3:]))


def _fetch_once(url: str, dest: Path, timeout: float, progress: bool) -> None:
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "captioner-download/1"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the part file is already complete
            part.replace(dest)
            return
        raise
    with response:
        if offset and response.status != 206:  # the server ignored Range: start again
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        mode = "ab" if offset else "wb"
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                         desc=dest.name, disable=not progress) as bar:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise ConnectionError(f"connection closed after {size} of {total} bytes")
    part.replace(dest)


def unzip(archive: Path, into: Path) -> None:
    marker = into / f".{archive.name}.done"
    if marker.exists():
        return
    try:
        with zipfile.ZipFile(archive) as z:
            bad = z.testzip()
            if bad is not None:
                raise DownloadError(f"{archive} is damaged ({bad}); delete it and download again")
            for member in z.infolist():  # refuse paths that would escape the folder
                target = (into / member.filename).resolve()
                if not str(target).startswith(str(into.resolve())):
                    raise DownloadError(f"{archive} holds an unsafe path: {member.filename}")
            z.extractall(into)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{archive} is not a valid zip ({err}); delete it and download again") from err
    marker.touch()


def download_coco(root: Path, year: str = "2017", splits: tuple[str, ...] = ("train", "val"),
                  base_url: str = COCO_URL, images: bool = True, progress: bool = True) -> None:
    archives = root / "archives"
    annotations = fetch(f"{base_url}/annotations/annotations_trainval{year}.zip",
                        archives / f"annotations_trainval{year}.zip", progress=progress)
    unzip(annotations, root)
    if images:
        for split in splits:
            archive = fetch(f"{base_url}/zips/{split}{year}.zip", archives / f"{split}{year}.zip", progress=progress)
            unzip(archive, root)


KARPATHY_URL = os.environ.get("CAPTIONER_KARPATHY_URL",
                              "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip")


def download_karpathy_split(root: Path, url: str | None = None, progress: bool = True) -> Path:
    """Karpathy's split of COCO 2014 (``dataset_coco.json``, from ``caption_datasets.zip``)
    into ``root``, beside the 2014 images its ``filepath`` fields name (``train2014/``,
    ``val2014/``): what ``train_captioner --dataset coco-karpathy --data-root root`` reads."""
    archive = fetch(url or KARPATHY_URL, root / "archives" / "caption_datasets.zip", progress=progress)
    unzip(archive, root / "archives" / "caption_datasets")
    found = next((root / "archives" / "caption_datasets").rglob("dataset_coco.json"), None)
    if found is None:
        raise DownloadError(f"{archive} holds no dataset_coco.json")
    target = root / "dataset_coco.json"
    if not target.exists():
        target.write_bytes(found.read_bytes())
    return target


def download_mnist(root: Path, mirrors: list[str] = MNIST_MIRRORS, progress: bool = True) -> None:
    raw = root / "MNIST" / "raw"
    for name, md5 in MNIST_FILES:
        target = raw / name[:-3]
        if target.exists():
            continue
        archive = fetch([m.rstrip("/") + "/" + name for m in mirrors], raw / name, md5=md5, progress=progress)
        with gzip.open(archive, "rb") as src, open(target.with_name(target.name + ".tmp"), "wb") as dst:
            shutil.copyfileobj(src, dst)
        target.with_name(target.name + ".tmp").replace(target)


def download_trajectories(root: Path, url: str = UCI_TRAJECTORIES_URL, progress: bool = True) -> Path:
    """UCI Character Trajectories (CC BY 4.0): ``root/char_trajectories/mixoutALL_shifted.mat``,
    whose ``mixout`` sequences ``demos.trajectory.model.read_mat_sequences`` reads."""
    folder = root / "char_trajectories"
    target = folder / "mixoutALL_shifted.mat"
    if target.exists():
        return target
    archive = fetch(url, folder / "character_trajectories.zip", progress=progress)
    unzip(archive, folder)
    found = sorted(folder.rglob("mixoutALL_shifted.mat"))
    if not found:
        raise DownloadError(f"{archive} holds no mixoutALL_shifted.mat")
    if found[0] != target:
        found[0].replace(target)
    return target
