"""A frozen CNN's convolutions with what follows them done in the same oneDNN call.

Profiled on a 2-core Xeon (AMX, bf16, channels_last), EfficientNet-Lite0 on a batch of 32
spent 35% of its time in the ReLU6 clamps between its convolutions and 13% padding the
inputs of its strided ("same" padded) ones: PyTorch's bf16 element-wise kernels run 3 to
4x slower per element than its float32 ones on this CPU, and every one of them reads and
writes a whole activation map. oneDNN applies such an activation to a convolution's output
while it is still in the kernel's registers (a "post-op"), for the cost of nothing.

``fuse_convolutions(backbone)`` returns a copy of the backbone (sharing its weights) in
which each convolution followed by ReLU6, ReLU or nothing (after ``fold_batchnorm``) is one
``torch.ops.mkldnn._convolution_pointwise`` call, and ResNet's ``relu(conv(x) + identity)``
is one ``_convolution_pointwise.binary`` call. A clamp to [0, 6] or a ReLU commutes with
bf16 rounding, so the output is the same bit for bit (checked at start-up by the encoder,
which falls back when it is not). For a single photo the weights are reordered once into
oneDNN's blocked layout for that input shape (``FusedConv.pack``); for batches oneDNN
picks its own.

Two ways to find the pairs: in a torch.fx graph (torchvision's ResNets, after
``fold_batchnorm``) by the graph's edges; in a model torch.fx cannot trace (timm's
EfficientNets) by registration order, a convolution followed directly by timm's folded
``BatchNormAct2d`` (``Sequential(drop, act)``).
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {nn.ReLU6: ("hardtanh", [0.0, 6.0]), nn.ReLU: ("relu", []), nn.Identity: ("none", [])}


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class FusedConv(nn.Module):
    """``act(conv(x))`` (or ``act(conv(x) + other)``) in one oneDNN call; timm's ``Conv2dSame``
    (TensorFlow's asymmetric "same" padding) pads first, as timm does."""

    def __init__(self, conv: nn.Conv2d, act: tuple[str, list[float]], add: bool = False):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.same = type(conv).__name__ == "Conv2dSame"
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.attr, self.scalars = act
        self.add = add
        self.packed: dict[tuple, torch.Tensor] = {}
        self.prepack = True

    def _pad_same(self, x: torch.Tensor) -> torch.Tensor:
        (ih, iw), (kh, kw) = x.shape[-2:], self.weight.shape[-2:]
        ph = max((-(-ih // self.stride[0]) - 1) * self.stride[0] + (kh - 1) * self.dilation[0] + 1 - ih, 0)
        pw = max((-(-iw // self.stride[1]) - 1) * self.stride[1] + (kw - 1) * self.dilation[1] + 1 - iw, 0)
        return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]) if ph or pw else x

    def __getstate__(self) -> dict:  # copies and pickles leave the packed weights behind (oneDNN's own tensors)
        return {**self.__dict__, "packed": {}}

    def pack(self, shape: torch.Size) -> torch.Tensor:
        """The weights in oneDNN's layout for inputs of ``shape`` on this many threads (the
        layout oneDNN picks depends on both: used with another thread count it is slower),
        packed again when the weights themselves change (``.to(dtype)``)."""
        key = (tuple(shape), torch.get_num_threads(), self.weight.dtype, self.weight.data_ptr())
        if key not in self.packed:
            self.packed[key] = torch._C._nn.mkldnn_reorder_conv2d_weight(
                self.weight.detach().to_mkldnn(), self.padding, self.stride, self.dilation, self.groups, list(shape))
        return self.packed[key]

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        if self.same:
            x = self._pad_same(x)
        w = self.pack(x.shape) if self.prepack and x.shape[0] == 1 and x.device.type == "cpu" else self.weight
        if other is not None:
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, other, w, self.bias, self.padding, self.stride, self.dilation, self.groups, "add", None,
                None if self.attr == "none" else self.attr, self.scalars, None)
        return torch.ops.mkldnn._convolution_pointwise(x, w, self.bias, self.padding, self.stride, self.dilation,
                                                       self.groups, self.attr, self.scalars, None)


def fuse_convolutions(backbone: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``backbone`` sharing its weights, its convolutions fused with what follows
    them; returns it and how many convolutions were fused (0: the copy is of no use)."""
    fused = copy.deepcopy(backbone, memo={id(p): p for p in backbone.parameters()})
    if isinstance(fused, torch.fx.GraphModule):
        return fused, _fuse_in_graph(fused)
    return fused, _fuse_in_order(fused)


def _activation(module: nn.Module) -> tuple[str, list[float]] | None:
    return ACTIVATIONS.get(type(module))


def _fuse_in_order(module: nn.Module) -> int:
    """Each Conv2d followed, in the same parent, by timm's folded ``Sequential(drop, act)``."""
    count = 0
    names = list(module._modules)
    for a, b in zip(names, names[1:]):
        conv, after = module._modules[a], module._modules[b]
        if (isinstance(conv, nn.Conv2d) and isinstance(after, nn.Sequential) and len(after) == 2
                and isinstance(after[0], nn.Identity) and _activation(after[1]) is not None):
            module._modules[a] = FusedConv(conv, _activation(after[1]))
            module._modules[b] = nn.Identity()
            count += 1
    for child in module.children():
        if not isinstance(child, FusedConv):
            count += _fuse_in_order(child)
    return count


def _fuse_in_graph(gm: torch.fx.GraphModule) -> int:
    """``relu(conv(x))`` and ``relu(conv(x) + other)`` in an fx graph (torchvision's ResNets)."""
    count = 0
    for node in list(gm.graph.nodes):
        if not (node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Conv2d)):
            continue
        found = _graph_pattern(gm, node)
        if found is None:
            continue
        last, other, dead = found
        name = f"fused_{count}"
        gm.add_submodule(name, FusedConv(gm.get_submodule(node.target), _act_of(gm, last), add=other is not None))
        with gm.graph.inserting_after(last):
            new = gm.graph.call_module(name, (node.args[0],) if other is None else (node.args[0], other))
        last.replace_all_uses_with(new)
        for gone in dead:  # users first
            gm.graph.erase_node(gone)
        count += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return count


def _only_user(node):
    return next(iter(node.users)) if len(node.users) == 1 else None


def _act_of(gm: torch.fx.GraphModule, node) -> tuple[str, list[float]] | None:
    if node is None:
        return None
    if node.op == "call_module":
        return _activation(gm.get_submodule(node.target))
    if node.op == "call_function" and node.target in (torch.relu, F.relu):
        return ACTIVATIONS[nn.ReLU]
    return None


def _graph_pattern(gm: torch.fx.GraphModule, conv):
    """What follows the convolution node ``conv``: (the activation node, the added node or
    None, the nodes the fused call replaces), or None when nothing fuses."""
    user = _only_user(conv)
    if user is None:
        return None
    if user.op == "call_function" and user.target in (operator.add, operator.iadd, torch.add):
        relu = _only_user(user)
        if len(user.args) != 2 or user.kwargs or _act_of(gm, relu) is None:
            return None
        other = user.args[1] if user.args[0] is conv else user.args[0]
        return None if other is conv else (relu, other, (relu, user, conv))
    if _act_of(gm, user) is not None:
        return user, None, (user, conv)
    return None
