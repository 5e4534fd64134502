"""Checkpoints: one safetensors file per model, never pickle.

A model checkpoint holds the weights as tensors and, in the file's string metadata, the
model's kind (``captioner``, ``mnist``, ...), its config dataclass as JSON and anything
else the model needs to be rebuilt (a captioner's vocabulary). Loading therefore never
asks the caller to repeat hyper-parameters.

A training checkpoint adds what ``--resume`` needs: the optimizer's tensors, the epoch and
step, the learning-rate schedule and every random number generator's state.

Files are written atomically: to a temporary file in the same folder, then renamed, so a
crash never leaves half a checkpoint behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

FORMAT = "captioner-project/1"


def shipped_checkpoints() -> Path:
    """Where the shipped checkpoints are: ``$CAPTIONER_CHECKPOINTS``, the clone's
    ``checkpoints/`` (a clone, or ``pip install -e .``), or the copy that ``pip install .``
    puts under ``<prefix>/share/captioner/checkpoints``."""
    import sys
    import sysconfig

    if os.environ.get("CAPTIONER_CHECKPOINTS"):
        return Path(os.environ["CAPTIONER_CHECKPOINTS"])
    clone = Path(__file__).resolve().parent.parent / "checkpoints"
    for candidate in (clone, Path(sysconfig.get_path("data")) / "share" / "captioner" / "checkpoints",
                      Path(sys.prefix) / "share" / "captioner" / "checkpoints"):
        if candidate.is_dir():
            return candidate
    return clone


CHECKPOINTS = shipped_checkpoints()


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


# ---------------------------------------------------------------------- atomic writes

def _umask_at_import() -> int:
    """The umask, read the only way POSIX offers (set it, then set it back): done once, at
    import, so that no later write changes it while other threads create files."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK_AT_IMPORT = _umask_at_import()


def current_umask() -> int:
    """The process's umask, read without changing it (Linux: ``Umask:`` in
    /proc/self/status); elsewhere the umask at import. Setting it to read it, as
    ``os.umask`` does, would let every other thread create files with that mask meanwhile."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return UMASK_AT_IMPORT


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes it private, and a writer may replace the file (safetensors does): the usual mode, after
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, in hex, read a megabyte at a time."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------- model checkpoints

def save_model(path: str | os.PathLike, kind: str, config: Any, tensors: dict[str, torch.Tensor],
               metadata: dict[str, str] | None = None, dtype: torch.dtype | None = None) -> None:
    """Write weights plus the config dataclass (and extra string metadata) to ``path``.
    ``dtype`` (e.g. ``torch.float16``) stores floating tensors smaller."""
    meta = {"format": FORMAT, "kind": kind, "config": json.dumps(_as_dict(config))}
    meta.update(metadata or {})
    tensors = {k: _for_disk(v, dtype) for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_model(path: str | os.PathLike, kind: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, str]]:
    """Read a checkpoint of ``kind`` onto the CPU: (config dict, float32 tensors, metadata)."""
    tensors, meta = read_safetensors(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project")
    if meta.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {meta.get('kind')!r} model, not a {kind!r} model")
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    return json.loads(meta["config"]), tensors, meta


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
        return load_file(str(path), device="cpu"), meta
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({err})") from err


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """A checkpoint's string metadata alone, without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({err})") from err


def load_state_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path) -> None:
    """``load_state_dict`` with every missing, unexpected or misshapen tensor named."""
    expected = module.state_dict()
    problems = [f"missing {k}" for k in expected if k not in tensors]
    problems += [f"unexpected {k}" for k in tensors if k not in expected]
    problems += [f"{k} has shape {tuple(tensors[k].shape)}, the model wants {tuple(v.shape)}"
                 for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if problems:
        raise CheckpointError(f"{path} does not fit this model: " + "; ".join(problems[:5])
                              + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    module.load_state_dict(tensors)


def config_from_dict(cls, data: dict, path) -> Any:
    """Rebuild a config dataclass, refusing unknown fields with a clear message."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise CheckpointError(f"{path} has config fields this version does not know: {sorted(unknown)}")
    return cls(**data)


def weight_settings(config: Any) -> dict:
    """The fields of a config dataclass that shape the weights, as JSON gives them back
    (tuples as lists): all but those declared with ``field(metadata={"weights": False})``
    (dropout, say), which a resumed run may change."""
    keep = {f.name for f in dataclasses.fields(config) if f.metadata.get("weights", True)}
    return json.loads(json.dumps({k: v for k, v in _as_dict(config).items() if k in keep}))


class Saveable:
    """For models whose whole state is their ``config`` dataclass and their weights:
    ``save`` writes one safetensors file; ``from_checkpoint`` rebuilds the model from it
    alone. Subclasses set ``kind``, ``config_class`` and ``default_checkpoint``."""

    kind: str
    config_class: type
    default_checkpoint: Path

    def save(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        save_model(path, self.kind, self.config, self.state_dict(), dtype=dtype)

    @classmethod
    def read_config(cls, path: str | os.PathLike | None = None):
        """The config of a checkpoint, read from its metadata alone (cheap)."""
        path = path or cls.default_checkpoint
        return config_from_dict(cls.config_class, json.loads(read_metadata(path)["config"]), path)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None = None):
        path = path or cls.default_checkpoint
        config, tensors, _ = load_model(path, cls.kind)
        model = cls(config_from_dict(cls.config_class, config, path))
        load_state_strict(model, tensors, path)
        return model.eval()


def _as_dict(config: Any) -> dict:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


def _for_disk(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    t = t.detach().to("cpu")
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t.contiguous()


# ---------------------------------------------------------------- training checkpoints

def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every generator's state, as tensors plus JSON."""
    np_state = np.random.get_state()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.numpy": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    info = {"python": [version, list(internal), gauss], "numpy": [np_state[0], *np_state[2:]]}
    return tensors, info


def set_rng_state(tensors: dict[str, torch.Tensor], info: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda])
    name, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = info["python"]
    random.setstate((version, tuple(internal), gauss))


def save_training_state(path: str | os.PathLike, *, kind: str, config: Any, model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, progress: dict,
                        scheduler: Any = None, metadata: dict[str, str] | None = None) -> None:
    """Everything ``--resume`` needs, in one safetensors file written atomically.
    ``progress`` is JSON (epoch, step, best metric, history...)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    opt_scalars: dict[str, dict] = {}
    for pid, pstate in opt["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{name}"] = value
            else:
                opt_scalars.setdefault(str(pid), {})[name] = value
    rng_tensors, rng_info = rng_state()
    tensors.update(rng_tensors)
    meta = {
        "training": json.dumps({
            "progress": progress,
            "optimizer_param_groups": opt["param_groups"],
            "optimizer_scalars": opt_scalars,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_info,
        }),
    }
    meta.update(metadata or {})
    save_model(path, kind, config, tensors, meta)


def load_training_state(path: str | os.PathLike, *, kind: str, model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, scheduler: Any = None,
                        restore_rng: bool = True) -> tuple[dict, dict]:
    """Restore a ``save_training_state`` file; returns (config dict, progress)."""
    config, tensors, meta = load_model(path, kind)
    if "training" not in meta:
        raise CheckpointError(f"{path} holds weights only, not a training state to resume")
    training = json.loads(meta["training"])
    load_state_strict(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, scalars in training["optimizer_scalars"].items():
        state.setdefault(int(pid), {}).update(scalars)
    # Restore the optimizer's tensors in their saved dtype (step counts are float32 in Adam).
    optimizer.load_state_dict({"state": state, "param_groups": training["optimizer_param_groups"]})
    if scheduler is not None and training["scheduler"] is not None:
        scheduler.load_state_dict(training["scheduler"])
    if restore_rng:
        set_rng_state(tensors, training["rng"])
    return config, training["progress"]
