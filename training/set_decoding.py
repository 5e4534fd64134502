"""Store a decoding setting in a checkpoint, as the one it ships (``DecodingConfig``):
the app, the command line and the API read it from there. The weights are written back
unchanged (the file's own precision); only the decoding metadata changes.

    python -m training.set_decoding --checkpoint checkpoints/captioner.safetensors \\
        --set claims_seen=1 --set claims_count=true --set beam_size=6

Choose the setting on validation photos first (``evaluate_captioner --variant``, the panel).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from captioner.model import DEFAULT_CHECKPOINT, Captioner
from lstmkit.checkpoint import read_safetensors
from lstmkit.runtools import UserError, cli

KEPT = ("format", "kind", "config", "vocabulary", "decoding", "object_words", "concept_words", "provenance")


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--set", action="append", required=True, metavar="KEY=VALUE", help="a DecodingConfig field")
    args = p.parse_args(argv)
    model = Captioner.from_checkpoint(args.checkpoint, load_encoder=False)
    try:
        decoding = model.decoding.updated(args.set)
    except ValueError as err:
        raise UserError(str(err)) from err
    changed = {k: v for k, v in asdict(decoding).items() if asdict(model.decoding)[k] != v}
    model.decoding = decoding
    tensors, meta = read_safetensors(args.checkpoint)
    stored = next((t.dtype for t in tensors.values() if t.is_floating_point()), None)  # fp16 stays fp16
    model.save(args.checkpoint, dtype=stored, metadata={k: v for k, v in meta.items() if k not in KEPT})
    print(f"{args.checkpoint}: decoding {changed or 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
