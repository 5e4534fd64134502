"""Exporting a demo's model to ONNX, checked against onnxruntime (the command line is
``python -m demos.onnx_export``).

``trajectory``: for Unity's inference engine (Sentis): opset 15, an ONNX ``LSTM`` (no
GRU), a dynamic batch. Input ``past`` (batch, 30, 2) float32 raw positions, oldest
first; output ``future`` (batch, 10, 2) float32 positions in the same units. The
normalisation (displacements from the last point, divided by the mean step length) is
inside the graph.

``mnist``: input ``digits`` (batch, 28, 28) float32 in [0, 1], white on black; output
``logits`` (batch, 10). The hand-written cells are exported through torch's fused LSTM
with the same weights, so the graph holds one ONNX ``LSTM`` op.

Every export is checked: onnxruntime must reproduce PyTorch within ``--tolerance``. For
the trajectory model the difference is measured in its normalised units (divided by the
window's mean step length): the model is scale-invariant, so its float32 rounding grows
with the coordinates' scale (PyTorch float32 itself differs from float64 as much).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lstmkit.checkpoint import atomic_write
from lstmkit.runtools import UserError

OPSET = 15


class MnistGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model.eval()
        model.fused_lstm()  # build it now: the tracer must not see its initialisation

    def forward(self, digits: torch.Tensor) -> torch.Tensor:
        return self.model(digits, fused=True)


def _sample(kind: str, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "trajectory":
        return torch.randn(batch, 30, 2, generator=g).cumsum(1) * 5 + 100
    return torch.rand(batch, 28, 28, generator=g)


def build(kind: str, checkpoint: Path | None) -> tuple[nn.Module, str, str]:
    if kind == "trajectory":
        from demos.trajectory.model import DEFAULT_CHECKPOINT, TrajectoryPredictor

        return TrajectoryPredictor.from_checkpoint(checkpoint or DEFAULT_CHECKPOINT), "past", "future"
    if kind == "mnist":
        from demos.mnist.model import DEFAULT_CHECKPOINT, RowLSTMClassifier

        return MnistGraph(RowLSTMClassifier.from_checkpoint(checkpoint or DEFAULT_CHECKPOINT)), "digits", "logits"
    raise UserError(f"unknown model {kind!r}")


def export(model: nn.Module, kind: str, input_name: str, output_name: str, out: Path,
           tolerance: float = 1e-4) -> dict:
    import onnx
    import onnxruntime as ort

    model.eval()
    example = _sample(kind, 2)

    def write(tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), tmp, input_names=[input_name], output_names=[output_name],
                              opset_version=OPSET, dynamo=False, do_constant_folding=True,
                              dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})
        onnx.checker.check_model(onnx.load(tmp))

    atomic_write(out, write)
    graph = onnx.load(str(out))
    ops = sorted({node.op_type for node in graph.graph.node})
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 7, 64):
        x = _sample(kind, batch, seed=batch)
        with torch.no_grad():
            expected = model(x).numpy()
            unit = model.normalise(x)[2].numpy() if kind == "trajectory" else 1.0
        got = session.run([output_name], {input_name: x.numpy()})[0]
        worst = max(worst, float((np.abs(got - expected) / unit).max()))
    if worst > tolerance:
        raise RuntimeError(f"onnxruntime differs from PyTorch by {worst:.2e} (> {tolerance:.0e})")
    return {"out": str(out), "opset": OPSET, "ops": ops, "max_abs_diff": worst,
            "units": "per unit step length" if kind == "trajectory" else "absolute"}
