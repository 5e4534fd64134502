"""Numerics chosen for the machine, never assumed: bf16 only where the CPU has it natively
and it measured faster; --precision overrides; captions agree across the two."""

from __future__ import annotations

import json

import pytest
import torch

from lstmkit import devices
from lstmkit.devices import choose_precision, cpu_info
from tests.conftest import flickr_sample


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A CPU with the flags a test gives it, and a measurement that counts its calls."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def pretend(flags, bf16_ms=10.0, fp32_ms=20.0):
        monkeypatch.setattr(devices, "cpu_flags", lambda: None if flags is None else frozenset(flags))
        monkeypatch.setattr(devices, "measure_bf16", lambda repeats=5: calls.append(1) or
                            {"bf16_ms": bf16_ms, "fp32_ms": fp32_ms})
        return calls

    return pretend


def test_a_cpu_without_native_bf16_gets_float32_without_measuring(machine):
    calls = machine({"avx2", "avx512f", "avx512_vnni"})  # the Xeon of issue 27: AVX-512, no BF16, no AMX
    assert choose_precision("cpu") == torch.float32 and calls == []


def test_native_bf16_is_kept_only_where_it_measured_faster(machine, tmp_path):
    calls = machine({"avx512f", "avx512_bf16"}, bf16_ms=10.0, fp32_ms=20.0)
    assert choose_precision("cpu") == torch.bfloat16
    assert choose_precision("cpu") == torch.bfloat16 and len(calls) == 1  # measured once, then cached
    cached = json.loads((tmp_path / "captioner" / "precision.json").read_text())
    assert list(cached.values()) == [{"bf16_ms": 10.0, "fp32_ms": 20.0}]
    machine({"amx_bf16"}, bf16_ms=19.0, fp32_ms=20.0)  # another machine: flags say yes, the clock says no
    assert choose_precision("cpu") == torch.float32


def test_where_the_cpu_reports_nothing_the_measurement_decides(machine):
    calls = machine(None, bf16_ms=30.0, fp32_ms=20.0)
    assert choose_precision("cpu") == torch.float32 and len(calls) == 1


def test_precision_flag_overrides_and_refuses_nonsense(machine):
    machine({"avx512f"})
    assert choose_precision("cpu", "bf16") == torch.bfloat16
    assert choose_precision("cpu", "fp32") == torch.float32
    with pytest.raises(ValueError, match="fp32"):
        choose_precision("cpu", "fp16")


def test_cpu_info_names_the_machine_and_its_flags():
    info = cpu_info()
    assert info["cores"] >= 1 and info["precision_auto"] in ("bf16", "fp32")
    assert info["torch_cpu_capability"]
    if info["flags"] is not None:
        assert info["native_bf16"] == bool({"avx512_bf16", "amx_bf16"} & set(info["flags"]))


def test_captions_agree_in_both_precisions(lite0):
    """Forced bf16 against forced float32 on real photos: features within bf16 rounding,
    and the captions of a trained model the same on most photos (the tolerance we set)."""
    from captioner.encoders import build_encoder
    from lstmkit.images import load_image
    from tests.conftest import memorising_captioner

    photos = [p for p, _ in flickr_sample(12)]
    encoders = {p: build_encoder("efficientnet_lite0", precision=p) for p in ("fp32", "bf16")}
    assert encoders["fp32"].dtype == torch.float32 and encoders["bf16"].dtype == torch.bfloat16
    images = [load_image(p) for p in photos]
    feats = {p: e.encode(e.preprocess.batch(images)) for p, e in encoders.items()}
    cos = torch.nn.functional.cosine_similarity(feats["fp32"], feats["bf16"])
    assert cos.min() > 0.99
    model = memorising_captioner(lite0)[0]
    captions = {p: [r.caption for r in model.caption_features(f)] for p, f in feats.items()}
    same = sum(a == b for a, b in zip(captions["fp32"], captions["bf16"]))
    assert same >= 10, list(zip(captions["fp32"], captions["bf16"]))
