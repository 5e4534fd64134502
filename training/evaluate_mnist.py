"""Test accuracy and confusion matrix of the MNIST classifier on the 10,000 test digits.

    python -m training.evaluate_mnist --data-root ../shared/data [--checkpoint PATH] [--json-out FILE]

Runs both inference paths, our hand-written LSTM cells and torch's fused LSTM with the
same weights, and reports how often they agree and how long each took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from captioner.checkpoint import atomic_write_text
from captioner.devices import resolve_device
from captioner.mnist import DEFAULT_CHECKPOINT, RowLSTMClassifier, accuracy, load_mnist
from training.common import cli, device_flag


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=Path("data"))
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--no-download", action="store_true")
    device_flag(p)
    args = p.parse_args(argv)

    model = RowLSTMClassifier.from_checkpoint(args.checkpoint).to(resolve_device(args.device))
    images, labels = load_mnist(args.data_root, train=False, download=not args.no_download)
    results = {}
    for name, fused in (("ours", False), ("fused", True)):
        start = time.perf_counter()
        acc, preds = accuracy(model, images, labels, fused=fused)
        results[name] = {"accuracy": acc, "seconds": round(time.perf_counter() - start, 3), "preds": preds}
    preds = results["fused"]["preds"]
    confusion = torch.zeros(10, 10, dtype=torch.long)
    confusion.index_put_((labels, preds), torch.ones_like(labels), accumulate=True)
    report = {
        "checkpoint": str(args.checkpoint),
        "test_digits": len(labels),
        "test_accuracy": results["fused"]["accuracy"],
        "test_accuracy_our_cells": results["ours"]["accuracy"],
        "paths_agree": float((results["ours"]["preds"] == preds).float().mean()),
        "seconds_our_cells": results["ours"]["seconds"],
        "seconds_fused": results["fused"]["seconds"],
        "errors": int((preds != labels).sum()),
        "confusion_matrix": confusion.tolist(),
    }
    print(f"test accuracy: {report['test_accuracy']:.4f} ({report['errors']} errors in {len(labels)})")
    print(f"our cells {report['seconds_our_cells']}s, fused {report['seconds_fused']}s, "
          f"predictions agree on {report['paths_agree']:.4%}")
    print("confusion matrix (rows: true digit, columns: predicted)")
    print("     " + " ".join(f"{c:5d}" for c in range(10)))
    for digit, row in enumerate(confusion.tolist()):
        print(f"{digit:3d}  " + " ".join(f"{v:5d}" for v in row))
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
