"""Device choice, its error messages, and the guards against numbers gone bad (on any
machine: GPUs are simulated where the test needs one)."""

import pytest
import torch

from lstmkit.devices import DeviceError, resolve_device


def test_auto_takes_cuda_then_mps_then_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("lstmkit.devices._mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr("lstmkit.devices._mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)


@pytest.mark.parametrize("spec, words", [
    ("cuda", ["CUDA GPU", "sees none", "--device auto or cpu"]),
    ("cuda:1", ["CUDA GPU", "sees none"]),
    ("mps", ["Apple's GPU", "does not have"]),
    ("tpu", ["is not a device", "auto, cpu, cuda, cuda:N or mps"]),
    ("xla", ["not supported here"]),
])
def test_a_device_that_is_not_there_is_one_clear_sentence(monkeypatch, spec, words):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("lstmkit.devices._mps_available", lambda: False)
    with pytest.raises(DeviceError) as err:
        resolve_device(spec)
    message = str(err.value)
    assert all(w in message for w in words), message
    assert "\n" not in message


def test_a_gpu_index_beyond_the_machine_says_how_many_there_are(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="GPU 3, but this machine has 2 .cuda:0 to cuda:1."):
        resolve_device("cuda:3")


def test_more_torchrun_processes_than_gpus_is_refused_before_any_process_group(monkeypatch):
    from lstmkit.runtools import UserError, init_distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: pytest.fail("joined a group"))
    with pytest.raises(UserError, match="started 2 processes on this machine, which has 1 GPU: use --nproc_per_node 1"):
        init_distributed("auto")
    monkeypatch.setattr("lstmkit.devices._mps_available", lambda: True)
    with pytest.raises(UserError, match="MPS"):
        init_distributed("mps")


def test_training_stops_at_the_first_non_finite_loss_naming_the_step(tmp_path):
    from demos.mnist.model import MnistConfig, RowLSTMClassifier
    from lstmkit.loop import Loop
    from lstmkit.runtools import UserError, optimizer_step

    model = RowLSTMClassifier(MnistConfig(8, 1, 0.0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def train_step(epoch, step):
        x = torch.rand(4, 28, 28)
        if step == 2:
            x[0, 0, 0] = float("nan")  # a bad input, as from broken encoder weights
        return optimizer_step(optimizer, model(x).logsumexp(-1).mean(), model.parameters(), 1.0)

    loop = Loop(kind="mnist-train", config=model.config, model=model, optimizer=optimizer, out=tmp_path,
                epochs=1, steps_per_epoch=5, train_step=train_step, validate=lambda: {"m": 0.0},
                save_best=lambda: None, metric="m", save_every=0)
    with pytest.raises(UserError) as err:
        loop.run()
    message = str(err.value)
    assert "the loss was nan at step 3 (epoch 1, batch 3 of 5)" in message and "not taken" in message
    assert loop.progress["global_step"] == 2
    after = model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())  # the bad step changed nothing
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the good ones did


def test_decoding_non_finite_scores_gives_empty_captions_not_an_error():
    from tests.test_decoder import random_captioner

    model = random_captioner(seed=7)
    with torch.no_grad():
        model.network.decoder.out.weight[:5] = float("nan")
    features = torch.randn(3, 32)
    features[1] = float("inf")
    for beam in (1, 3):
        results = model.caption_features(features, beam_size=beam)
        assert len(results) == 3
        assert all(isinstance(r.caption, str) for r in results)


def test_feature_cache_refuses_non_finite_and_keeps_float32_where_fp16_overflows(tmp_path, caplog):
    from captioner.encoders import build_encoder
    from captioner.train.features import FeatureCache, NonFiniteFeatures
    from tests.conftest import flickr_sample

    photos = [p for p, _ in flickr_sample(3)]
    encoder = build_encoder("resnet18", weights="random")
    scale = {"value": 1e6}
    real = encoder.encode
    encoder.encode = lambda batch, grid=False: (real(batch) * 0 + scale["value"])
    cache = FeatureCache(tmp_path, encoder)
    with caplog.at_level("WARNING"):
        features, flipped = cache.get(photos, num_workers=0, progress=False)
    assert features.dtype == torch.float32 and float(features.max()) == 1e6  # fp16 would hold inf
    assert "do not fit fp16" in caplog.text
    scale["value"] = float("nan")
    with pytest.raises(NonFiniteFeatures, match="NaN or infinite features for .*jpg"):
        FeatureCache(tmp_path / "other", encoder).get(photos, num_workers=0, progress=False)


def test_freed_memory_is_kept_for_the_next_tensor_under_glibc():
    import platform
    import sys

    from lstmkit import devices

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert devices.keep_freed_memory() is True
    assert devices.keep_freed_memory.cache_info().hits + devices.keep_freed_memory.cache_info().misses >= 1
