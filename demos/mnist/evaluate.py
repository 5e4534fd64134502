"""Test accuracy and confusion matrix of the MNIST classifier on the 10,000 test digits.

    python -m demos.mnist.evaluate --data-root ../shared/data [--checkpoint PATH] [--json-out FILE]

Runs both inference paths, our hand-written LSTM cells and torch's fused LSTM with the
same weights, and reports how often they agree and how long each took.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from demos.mnist.data import mnist_flags, read_mnist
from demos.mnist.model import DEFAULT_CHECKPOINT, RowLSTMClassifier, accuracy
from lstmkit.devices import resolve_device
from lstmkit.runtools import cli, evaluation_flags, write_report


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mnist_flags(evaluation_flags(p, DEFAULT_CHECKPOINT))
    args = p.parse_args(argv)

    model = RowLSTMClassifier.from_checkpoint(args.checkpoint).to(resolve_device(args.device))
    images, labels = read_mnist(args, train=False)
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
    write_report(args, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
