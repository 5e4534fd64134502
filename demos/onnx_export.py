"""Export a trained demo model to ONNX, and check it against onnxruntime (``demos/onnx.py``
says what each graph takes and gives).

    python -m demos.onnx_export trajectory --out checkpoints/trajectory.onnx
    python -m demos.onnx_export mnist --out mnist.onnx
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from demos.onnx import build, export
from lstmkit.runtools import cli


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", choices=["trajectory", "mnist"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped checkpoint")
    p.add_argument("--tolerance", type=float, default=1e-4)
    args = p.parse_args(argv)
    model, input_name, output_name = build(args.model, args.checkpoint)
    report = export(model, args.model, input_name, output_name, args.out, args.tolerance)
    print(f"wrote {report['out']}: opset {report['opset']}, onnxruntime max |diff| {report['max_abs_diff']:.2e} "
          f"({report['units']})")
    print("ops: " + " ".join(report["ops"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
