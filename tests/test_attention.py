"""Show, Attend and Tell: the attention decoder, its results, maps, CLI output, training
and the app's maps, on a tiny attention captioner trained on real Flickr8k photos."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner import search
from captioner.decoder import AttentionDecoder, packed_targets
from tests.conftest import ROOT, memorising_captioner, running_app


@pytest.fixture(scope="module")
def tiny_attender(lite0, tmp_path_factory):
    """``memorising_captioner`` with attention (hidden 128, grid and attention 64), saved as a
    checkpoint too."""
    model, sample, images, _, _, captions = memorising_captioner(lite0, decoder="attention", grid_dim=64,
                                                                 attention_dim=64)
    path = tmp_path_factory.mktemp("attender") / "captioner.safetensors"
    model.save(path)
    return model, sample, images, captions, path


def test_attention_weights_are_a_distribution_over_the_grid_at_every_step():
    torch.manual_seed(0)
    dec = AttentionDecoder(vocab_size=20, embed_dim=8, hidden_dim=16, num_layers=1, dropout=0.0,
                           grid_dim=6, attention_dim=5)
    ctx = {"image": torch.randn(3, 8), "grid": torch.randn(3, 49, 6)}
    caps = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0], [1, 9, 9, 2, 0]])
    lengths = torch.tensor([5, 3, 4])
    logits, weights = dec(caps, lengths, ctx)
    assert logits.shape == (len(packed_targets(caps, lengths)), 20)
    assert weights.shape == (3, 4, 49)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(weights[i, :n - 1].sum(-1), torch.ones(n - 1))
        assert float(weights[i, n - 1:].detach().abs().sum()) == 0  # padded steps look nowhere
    greedy = search.greedy(dec, ctx, max_length=6)
    beam1 = search.beam_search(dec, ctx, beam_size=1, max_length=6)
    assert [g.ids for g in greedy] == [b.ids for b in beam1]
    for g in greedy:
        assert len(g.attention) == len(g.ids) and all(abs(sum(w) - 1) < 1e-4 for w in g.attention)


def test_heat_maps_show_focus_on_a_fixed_scale_and_even_attention_as_no_heat():
    from captioner.attention_maps import FULL_FOCUS, focus, heat

    even = [1 / 49] * 49
    assert focus(even) == pytest.approx(1.0)
    assert int(np.asarray(heat(even, (7, 7), (70, 70)))[..., 3].max()) == 0  # nothing drawn
    one = [0.0] * 49
    one[3 * 7 + 5] = 1.0  # row 3, column 5
    assert focus(one) == pytest.approx(49.0) and focus(one) > FULL_FOCUS
    alpha = np.asarray(heat(one, (7, 7), (70, 70)))[..., 3]
    assert alpha[35, 55] > 150 and alpha[5, 5] == 0  # hot where it looked, clear far from it


def test_a_heat_map_is_the_ramp_of_each_level_looked_up_from_one_table():
    """The table holds, for each of the 256 levels of the smoothed map, exactly the colour and
    alpha the ramp's formula gives (the map is drawn by one lookup per pixel)."""
    from captioner.attention_maps import _RAMP, FULL_FOCUS, _heat_table, heat_of

    smooth = np.arange(256, dtype=np.float32) / 255.0
    position = smooth * (len(_RAMP) - 1)
    low = np.clip(position.astype(int), 0, len(_RAMP) - 2)
    frac = (position - low)[:, None]
    expected = np.concatenate([_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac, (210 * smooth)[:, None]], -1)
    np.testing.assert_array_equal(_heat_table(), expected.astype(np.uint8))
    density = np.zeros((7, 7), dtype=np.float32)
    density[3, 3] = 10.0
    picture = np.asarray(heat_of(density, (70, 70)))
    assert picture.shape == (70, 70, 4) and picture[35, 35, 3] >= 200 and picture[0, 0, 3] == 0
    from PIL import Image  # every pixel is the table's row for its level of the smoothed map

    level = np.clip((density - 1.0) / (FULL_FOCUS - 1.0), 0.0, 1.0)
    smoothed = np.asarray(Image.fromarray((level * 255).astype(np.uint8)).resize((70, 70), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(picture, _heat_table()[smoothed])


def test_the_doubly_stochastic_penalty_is_part_of_the_loss(tiny_attender):
    from captioner.inputs import PhotoInputs
    from captioner.train.losses import caption_loss

    model = tiny_attender[0]
    feats, grid = torch.randn(2, 1280), torch.randn(2, 49, 1280)
    caps, lengths = torch.tensor([[1, 4, 5, 2], [1, 6, 2, 0]]), torch.tensor([4, 3])
    inputs = PhotoInputs(feats, grid)
    plain = caption_loss(model.network, inputs, caps, lengths)
    _, weights = model.network(inputs, caps, lengths)
    penalty = ((1.0 - weights.sum(1)) ** 2).mean()
    assert float(penalty.detach()) > 0
    torch.testing.assert_close(caption_loss(model.network, inputs, caps, lengths, attention_reg=2.0),
                               plain + 2.0 * penalty)


def test_an_attention_captioner_captions_with_objects_familiarity_and_attention_per_word(tiny_attender):
    model, _, images, captions, path = tiny_attender
    from captioner.model import Captioner

    assert model.network.attends
    results = model.caption(images)
    assert sum(r.caption == c.lower().rstrip(" .") for r, c in zip(results, captions)) >= 9, \
        [(r.caption, c) for r, c in zip(results, captions)]
    for r in results:
        assert r.grid == (7, 7) and len(r.attention) == len(r.words) == len(r.probabilities)
        assert all(len(w) == 49 and abs(sum(w) - 1) < 1e-3 for w in r.attention)
        assert r.objects and 0 <= r.familiarity <= 1
        assert r.to_dict()["attention_grid"] == [7, 7]
    from captioner.attention_maps import focus

    assert max(focus(w) for r in results for w in r.attention) > 2.0  # it does look somewhere
    greedy = model.caption(images, beam_size=1)
    one_by_one = [model.caption([im], beam_size=1)[0] for im in images[:3]]
    assert [r.caption for r in greedy[:3]] == [r.caption for r in one_by_one]  # batching changes nothing
    loaded = Captioner.from_checkpoint(path)
    assert loaded.network.attends
    assert [r.caption for r in loaded.caption(images[:4])] == [r.caption for r in results[:4]]


def test_cli_json_carries_attention_and_writes_one_map_per_photo(tiny_attender, tmp_path):
    from captioner.__main__ import caption_files, main

    model, sample, _, _, path = tiny_attender
    photos = [p for p, _ in sample[:3]]
    out = io.StringIO()
    maps = tmp_path / "maps"
    assert caption_files(model, photos, beam_size=None, batch_size=2, as_json=True, out=out, attention_dir=maps) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert line["attention_grid"] == [7, 7] and len(line["attention"]) == len(line["words"])
        assert all(abs(sum(w) - 1) < 1e-3 for w in line["attention"])
    pngs = sorted(maps.glob("*.png"))
    assert len(pngs) == 3
    for png in pngs:
        with Image.open(png) as sheet:
            assert sheet.format == "PNG" and sheet.width >= 160 * 2  # the photo and its words' maps
    # the command line itself, with --attention-dir
    assert main(["caption", str(photos[0]), "--checkpoint", str(path), "--attention-dir",
                 str(tmp_path / "cli"), "--json"]) == 0
    assert len(list((tmp_path / "cli").glob("*.png"))) == 1


@pytest.fixture(scope="module")
def attention_args(tmp_path_factory):
    from tests.conftest import shared

    cache = tmp_path_factory.mktemp("features")
    return ["--dataset", "coco", "--data-root", str(shared("coco_mini")), "--cache-dir", str(cache),
            "--decoder", "attention", "--embed-dim", "32", "--hidden-dim", "32", "--min-count", "2"]


def _train(args, torchrun: int = 0):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(torchrun)] if torchrun else []
    result = subprocess.run([sys.executable, *launcher, "-m", "training.train_captioner", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_train_an_attention_decoder_on_cached_grids(tmp_path, attention_args):
    """``--decoder attention --dry-run``: the grid cache (fp16, its own folder) is written and
    the checkpoint is an attention captioner that captions with attention."""
    from safetensors import safe_open

    from captioner.model import Captioner
    from tests.conftest import shared

    _train([*attention_args, "--dry-run", "--out", str(tmp_path / "run")])
    cache = Path(attention_args[attention_args.index("--cache-dir") + 1])
    grids = [d for d in cache.iterdir() if d.name.endswith("-grid")]
    assert len(grids) == 1
    with safe_open(str(next(grids[0].glob("shard-*.safetensors"))), "pt") as f:
        shard, flipped = f.get_tensor("features"), f.get_tensor("flipped")
    assert shard.dtype == torch.float16 and shard.shape[1:] == (49, 1280) and flipped.shape == shard.shape
    model = Captioner.from_checkpoint(tmp_path / "run" / "best.safetensors")
    assert model.config.decoder == "attention"
    r = model.caption([Image.open(next(shared("coco_mini").glob("train2017/*.jpg"))).convert("RGB")])[0]
    assert r.attention is not None and len(r.attention) == len(r.words)


def test_an_attention_run_resumes_exactly_and_trains_on_two_processes(tmp_path, attention_args):
    from safetensors.torch import load_file

    common = [*attention_args, "--dry-run", "--epochs", "2", "--save-every", "2"]
    _train([*common, "--out", str(tmp_path / "straight")])
    _train([*common, "--out", str(tmp_path / "resumed"), "--max-steps", "3"])
    _train([*common, "--out", str(tmp_path / "resumed"), "--resume"])
    a, b = (load_file(str(tmp_path / run / "last.safetensors")) for run in ("straight", "resumed"))
    assert any(k.startswith("model.grid_projection") for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if k.startswith("model."))
    _train([*attention_args, "--dry-run", "--out", str(tmp_path / "ddp")], torchrun=2)
    from captioner.model import Captioner

    assert Captioner.from_checkpoint(tmp_path / "ddp" / "best.safetensors", load_encoder=False).config.decoder \
        == "attention"


@pytest.fixture(scope="module")
def attention_server(tiny_attender, tmp_path_factory):
    """``python app.py`` with the tiny attention captioner as its captioner."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_app(log, CAPTIONER_CHECKPOINTS=str(tiny_attender[4].parent)) as app:
        yield app["url"]


@pytest.mark.browser
def test_the_app_shows_where_an_attention_model_looked(attention_server, tiny_attender, tmp_path):
    from tests.test_browser import CHROMIUM, SHOTS, expect

    playwright = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    photos = [str(p) for p, _ in tiny_attender[1][:2]]
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(attention_server, wait_until="networkidle")
        page.locator("#caption-files input[type=file]").set_input_files(photos)
        page.wait_for_timeout(500)
        page.locator("#caption-button").click()
        captions = page.locator("#caption-output .caption")
        expect(captions).to_have_count(2, timeout=90_000)
        looked = page.locator("#caption-looked")
        expect(looked).to_be_visible()  # shown, and folded until asked for
        pictures = page.locator("#caption-attention img")
        expect(pictures).to_have_count(0)  # not drawn with the caption: drawn when the section is opened
        looked.get_by_text("Where it looked, word by word").click()
        labels = page.locator("#caption-attention .caption-label")
        expect(labels.first).to_be_visible()
        page.screenshot(path=str(SHOTS / "attention.png"), full_page=True)
        # one picture per word of one photo's caption, in order: "1. a (photo.jpg)", "2. man", ...
        words = [label.split(" (")[0].split(". ", 1) for label in labels.all_inner_texts()]
        expect(page.locator("#caption-attention img")).to_have_count(len(words))
        assert [int(n) for n, _ in words] == list(range(1, len(words) + 1))
        written = [t.strip().rstrip(".").lower() for t in captions.all_inner_texts()]  # shown as sentences
        assert " ".join(w for _, w in words).lower() in written
        # a new caption folds the section and empties it: opened again, it draws that caption's pictures
        page.locator("#caption-button").click()
        expect(pictures).to_have_count(0, timeout=90_000)
        expect(labels).to_have_count(0)
        looked.get_by_text("Where it looked, word by word").click()
        expect(pictures).to_have_count(len(words))
        browser.close()
