"""The README's deploy path: the files its ``hf upload`` command sends, started as a
Hugging Face Space starts them, caption a photo."""

import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT, free_port, shipped


def upload_patterns() -> list[str]:
    """The ``--include`` patterns of the README's ``hf upload`` command."""
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("hf upload ")]
    assert len(lines) == 1, "the README gives one hf upload command"
    words = shlex.split(lines[0])
    return [words[i + 1] for i, w in enumerate(words) if w == "--include"]


def copy_space_files(space) -> list[str]:
    """Copy into ``space`` the tracked files the README's upload sends (skips the test
    outside a git checkout); returns their paths."""
    from huggingface_hub.utils import filter_repo_objects

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know the tracked files")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    sent = list(filter_repo_objects(tracked, allow_patterns=upload_patterns()))
    for path in sent:
        (space / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, space / path)
    return sent


def test_the_uploaded_files_start_as_a_space_and_caption_a_photo(tmp_path):
    from gradio_client import Client, handle_file

    shipped("captioner.safetensors")
    space = tmp_path / "space"
    sent = copy_space_files(space)
    assert "checkpoints/captioner.safetensors" in sent and not any(p.startswith("tests/") for p in sent)
    for needed in ("webapp/examples/CREDITS.md", "demos/samples/MNIST/raw/t10k-images-idx3-ubyte",
                   "demos/samples/char_trajectories_held_out.json"):  # the tabs' own data travels with them
        assert needed in sent
    for path in sorted(space.rglob("*"), reverse=True):  # a read-only checkout
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    space.chmod(0o555)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPTIONER_", "PYTHONPATH"))}
    port = free_port()
    env.update(HOME=str(home), GRADIO_SERVER_NAME="0.0.0.0", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    log = open(tmp_path / "space.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        start = time.time()
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() - start > 120:
                    pytest.fail("the Space did not start: " + (tmp_path / "space.log").read_text()[-3000:])
                time.sleep(0.3)
        import skimage.data
        from PIL import Image

        photo = tmp_path / "coffee.jpg"
        Image.fromarray(skimage.data.coffee()).save(photo)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        *_, results, timing = client.predict([handle_file(str(photo))], "greedy", 1, api_name="/caption")
        assert results[0]["caption"] and "coffee" in results[0]["words"], results[0]
        picture, summary = client.predict(3, api_name="/predict_frames")  # no download, no ../shared
        assert picture and summary["mse_per_frame"] > 0
        config = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10).read().decode()
        examples = list((space / "webapp" / "examples").glob("*.jpg"))
        assert config.count("pen trajectory #") >= 40 and len(examples) >= 4 and all(p.name in config for p in examples)
        assert not any(home.iterdir()) or all(p.name in (".cache", ".config") for p in home.iterdir())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        space.chmod(0o755)
        for path in space.rglob("*"):
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
