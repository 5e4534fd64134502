"""Downloads against a local HTTP server on loopback: resume, checksums, unpacking."""

import gzip
import hashlib
import http.server
import io
import threading
import zipfile

import pytest

from lstmkit import downloads as download
from training import download as download_cli


class Server:
    """Serves ``files`` with HTTP Range support; can cut the first response short."""

    def __init__(self, files: dict[str, bytes], cut_first_after: int | None = None, honour_range=True):
        self.files, self.requests = files, []
        self.cut = cut_first_after
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Range")))
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if honour_range and self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut is not None:
                    body, outer.cut = body[:outer.cut], None  # drop the connection mid-file once
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def payload():
    return bytes(range(256)) * 4000  # ~1 MB


def test_interrupted_download_resumes_with_a_range_request(tmp_path, payload):
    server = Server({"/f.bin": payload}, cut_first_after=300_000)
    try:
        dest = tmp_path / "f.bin"
        with pytest.raises(download.DownloadError):
            download.fetch(server.url + "/f.bin", dest, retries=1, progress=False)
        part = tmp_path / "f.bin.part"
        assert part.stat().st_size == 300_000 and not dest.exists()
        download.fetch(server.url + "/f.bin", dest, md5=hashlib.md5(payload).hexdigest(), progress=False)
        assert dest.read_bytes() == payload and not part.exists()
        assert server.requests[-1] == ("/f.bin", "bytes=300000-")
    finally:
        server.close()


def test_server_ignoring_range_restarts_cleanly(tmp_path, payload):
    server = Server({"/f.bin": payload}, honour_range=False)
    try:
        (tmp_path / "f.bin.part").write_bytes(b"junk" * 10)
        download.fetch(server.url + "/f.bin", tmp_path / "f.bin", progress=False)
        assert (tmp_path / "f.bin").read_bytes() == payload
    finally:
        server.close()


def test_checksum_mismatch_tries_the_next_mirror(tmp_path, payload):
    bad, good = Server({"/f.bin": b"tampered"}), Server({"/f.bin": payload})
    try:
        md5 = hashlib.md5(payload).hexdigest()
        download.fetch([bad.url + "/f.bin", good.url + "/f.bin"], tmp_path / "f.bin", md5=md5, progress=False)
        assert (tmp_path / "f.bin").read_bytes() == payload
        with pytest.raises(download.DownloadError, match="checksum"):
            download.fetch(bad.url + "/f.bin", tmp_path / "g.bin", md5=md5, retries=1, progress=False)
        assert not (tmp_path / "g.bin").exists()
    finally:
        bad.close()
        good.close()


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buffer.getvalue()


def test_coco_layout_is_what_the_trainer_reads(tmp_path):
    from PIL import Image

    image = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(image, "JPEG")
    captions = ('{"images": [{"id": 7, "file_name": "000000000007.jpg"}], '
                '"annotations": [{"id": 1, "image_id": 7, "caption": "A red square."}]}')
    server = Server({
        "/annotations/annotations_trainval2017.zip": _zip({"annotations/captions_train2017.json": captions}),
        "/zips/train2017.zip": _zip({"train2017/000000000007.jpg": image.getvalue()}),
    })
    try:
        root = tmp_path / "coco"
        download_cli.main(["coco", "--root", str(root), "--splits", "train", "--base-url", server.url])
        from captioner.train.datasets import read_dataset

        records = read_dataset("coco", root, "train2017").records
        assert [(r.image.name, r.caption) for r in records] == [("000000000007.jpg", "A red square.")]
        n = len(server.requests)
        download_cli.main(["coco", "--root", str(root), "--splits", "train", "--base-url", server.url])
        assert len(server.requests) == n  # everything was already there
    finally:
        server.close()


def test_karpathy_split_lands_beside_the_2014_images(tmp_path, monkeypatch):
    """``download coco --year 2014 --karpathy``: the images and dataset_coco.json where
    ``train_captioner --dataset coco-karpathy`` reads them, restval training."""
    import json

    from PIL import Image

    image = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 10)).save(image, "JPEG")
    split = {"images": [{"filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg", "split": "restval",
                         "sentences": [{"raw": "A green square.", "tokens": ["a", "green", "square"]}]}]}
    server = Server({
        "/annotations/annotations_trainval2014.zip": _zip({"annotations/captions_val2014.json": '{"images": [], '
                                                                                                '"annotations": []}'}),
        "/zips/val2014.zip": _zip({"val2014/COCO_val2014_000000000042.jpg": image.getvalue()}),
        "/caption_datasets.zip": _zip({"dataset_coco.json": json.dumps(split)}),
    })
    monkeypatch.setattr(download, "KARPATHY_URL", server.url + "/caption_datasets.zip")
    try:
        root = tmp_path / "coco2014"
        assert download_cli.main(["coco", "--root", str(root), "--year", "2014", "--splits", "val", "--karpathy",
                                  "--base-url", server.url]) == 0
        from captioner.train.datasets import read_dataset

        found = read_dataset("coco-karpathy", root)
        assert [(r.image.name, r.caption) for r in found.records] == [("COCO_val2014_000000000042.jpg",
                                                                       "A green square.")]
        assert list(found.splits.values()) == ["train"]
        assert download_cli.main(["coco", "--root", str(root), "--karpathy"]) == 2  # 2017 has no Karpathy split
    finally:
        server.close()


def test_mnist_files_are_checked_and_unpacked(tmp_path, monkeypatch):
    files = {name: gzip.compress(f"{name} contents".encode()) for name, _ in download.MNIST_FILES}
    monkeypatch.setattr(download, "MNIST_FILES",
                        [(name, hashlib.md5(data).hexdigest()) for name, data in files.items()])
    server = Server({f"/mnist/{name}": data for name, data in files.items()})
    try:
        download.download_mnist(tmp_path, [server.url + "/missing/", server.url + "/mnist/"], progress=False)
        raw = tmp_path / "MNIST" / "raw"
        assert (raw / "t10k-labels-idx1-ubyte").read_bytes() == b"t10k-labels-idx1-ubyte.gz contents"
    finally:
        server.close()


def test_unsafe_zip_paths_are_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip({"../escape.txt": b"x"}))
    with pytest.raises(download.DownloadError, match="unsafe"):
        download.unzip(archive, tmp_path / "into")


def test_uci_trajectories_archive_is_found_and_read(tmp_path):
    import numpy as np
    from scipy.io import savemat

    from demos.trajectory.model import read_mat_sequences

    seq = np.zeros((3, 60))
    seq[0, 5:55], seq[1, 5:55] = 1.0, 2.0  # padded at both ends, like the real file
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0], cells[0, 1] = seq, seq * 2
    buffer = io.BytesIO()
    savemat(buffer, {"mixout": cells})
    server = Server({"/ct.zip": _zip({"mixoutALL_shifted.mat": buffer.getvalue()})})
    try:
        path = download.download_trajectories(tmp_path, server.url + "/ct.zip", progress=False)
    finally:
        server.close()
    sequences = read_mat_sequences(path)
    assert len(sequences) == 2 and sequences[0].shape == (50, 2)
    np.testing.assert_allclose(sequences[1][-1], [100.0, 200.0])
