"""LSTM cells written from the gate equations.

For input x_t, hidden state h_{t-1} and cell state c_{t-1}:

    i_t = sigmoid(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)     input gate
    f_t = sigmoid(W_if x_t + b_if + W_hf h_{t-1} + b_hf)     forget gate
    g_t =    tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)     cell candidate
    o_t = sigmoid(W_io x_t + b_io + W_ho h_{t-1} + b_ho)     output gate
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)

The four gates' weights are stacked in the order i, f, g, o, as in ``torch.nn.LSTMCell``,
so weights copy across both ways (``from_torch`` / ``to_torch``).

``ConvLSTMCell`` (Shi et al. 2015) is the same cell with convolutions in place of the
matrix products: input and hidden state are concatenated on channels and one convolution
produces all four gates.
"""

from __future__ import annotations

import torch
from torch import nn

State = tuple[torch.Tensor, torch.Tensor]


def lstm_gates(gates: torch.Tensor, c: torch.Tensor, dim: int = 1) -> State:
    """The cell update from the summed gate pre-activations ``W_i* x + b_i* + W_h* h + b_h*``
    (stacked i, f, g, o along ``dim``) and the previous cell state: returns (h, c). Every
    LSTM in the project (these cells, the caption decoders' inference steps) runs this."""
    i, f, g, o = gates.chunk(4, dim)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


class LSTMCell(nn.Module):
    """One LSTM step, with separate input->hidden and hidden->hidden linear maps."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.input_map = nn.Linear(input_size, 4 * hidden_size, bias=bias)    # W_i* x + b_i*
        self.hidden_map = nn.Linear(hidden_size, 4 * hidden_size, bias=bias)  # W_h* h + b_h*
        bound = hidden_size ** -0.5  # torch.nn.LSTMCell's initialisation
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        zeros = torch.zeros(batch, self.hidden_size, device=device, dtype=dtype)
        return zeros, zeros.clone()

    def forward(self, x: torch.Tensor, state: State | None = None) -> State:
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        return self.step(self.input_map(x), state)

    def step(self, projected_x: torch.Tensor, state: State) -> State:
        """A step whose input map ``W_i* x + b_i*`` was already applied (for whole sequences
        at once, which is faster than one small matrix product per step)."""
        h, c = state
        return lstm_gates(projected_x + self.hidden_map(h), c)

    @torch.no_grad()
    def copy_from(self, weight_ih, weight_hh, bias_ih=None, bias_hh=None) -> LSTMCell:
        self.input_map.weight.copy_(weight_ih)
        self.hidden_map.weight.copy_(weight_hh)
        if bias_ih is not None:
            self.input_map.bias.copy_(bias_ih)
            self.hidden_map.bias.copy_(bias_hh)
        return self

    @classmethod
    def from_torch(cls, cell: nn.LSTMCell) -> LSTMCell:
        ours = cls(cell.input_size, cell.hidden_size, bias=cell.bias)
        return ours.copy_from(cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)


class LSTM(nn.Module):
    """A stack of ``LSTMCell``s run over time, batch-first: (B, T, input) -> (B, T, hidden)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
                 bias: bool = True):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.cells = nn.ModuleList(
            LSTMCell(input_size if layer == 0 else hidden_size, hidden_size, bias) for layer in range(num_layers))
        self.dropout = nn.Dropout(dropout)  # between layers, as torch.nn.LSTM does

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``state``: (h0, c0) each (num_layers, B, hidden), or None for zeros.
        Returns the last layer's outputs (B, T, hidden) and (h_n, c_n)."""
        batch, steps, _ = x.shape
        h_n, c_n = [], []
        for layer, cell in enumerate(self.cells):
            if layer > 0:
                x = self.dropout(x)
            if state is None:
                h, c = cell.init_state(batch, x.device, x.dtype)
            else:
                h, c = state[0][layer], state[1][layer]
            projected = cell.input_map(x)  # all time steps in one product
            outputs = []
            for t in range(steps):
                h, c = cell.step(projected[:, t], (h, c))
                outputs.append(h)
            x = torch.stack(outputs, 1)
            h_n.append(h)
            c_n.append(c)
        return x, (torch.stack(h_n), torch.stack(c_n))

    @classmethod
    def from_torch(cls, lstm: nn.LSTM) -> LSTM:
        if not lstm.batch_first or lstm.bidirectional or lstm.proj_size:
            raise ValueError("only batch-first, one-directional nn.LSTMs without projections copy across")
        ours = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.dropout, lstm.bias)
        for layer, cell in enumerate(ours.cells):
            cell.copy_from(*(getattr(lstm, f"{name}_l{layer}") for name in _TORCH_NAMES[: 4 if lstm.bias else 2]))
        return ours

    @torch.no_grad()
    def to_torch(self) -> nn.LSTM:
        """The same weights in torch's fused ``nn.LSTM`` (faster at inference)."""
        bias = self.cells[0].input_map.bias is not None
        lstm = nn.LSTM(self.input_size, self.hidden_size, self.num_layers, bias=bias, batch_first=True,
                       dropout=self.dropout.p if self.num_layers > 1 else 0.0)
        for layer, cell in enumerate(self.cells):
            getattr(lstm, f"weight_ih_l{layer}").copy_(cell.input_map.weight)
            getattr(lstm, f"weight_hh_l{layer}").copy_(cell.hidden_map.weight)
            if bias:
                getattr(lstm, f"bias_ih_l{layer}").copy_(cell.input_map.bias)
                getattr(lstm, f"bias_hh_l{layer}").copy_(cell.hidden_map.bias)
        return lstm.to(self.cells[0].input_map.weight.device)


_TORCH_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class ConvLSTMCell(nn.Module):
    """An LSTM cell over feature maps: (B, C_in, H, W) -> (h, c), each (B, C_hidden, H, W)."""

    def __init__(self, input_channels: int, hidden_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        self.input_channels, self.hidden_channels = input_channels, hidden_channels
        self.conv = nn.Conv2d(input_channels + hidden_channels, 4 * hidden_channels, kernel_size,
                              padding=kernel_size // 2, bias=bias)

    def init_hidden(self, batch: int, image_size: tuple[int, int], device=None, dtype=None) -> State:
        zeros = torch.zeros(batch, self.hidden_channels, *image_size, device=device, dtype=dtype)
        return zeros, zeros.clone()

    def forward(self, x: torch.Tensor, state: State | None = None) -> State:
        if state is None:
            state = self.init_hidden(x.shape[0], x.shape[-2:], x.device, x.dtype)
        h, c = state
        return lstm_gates(self.conv(torch.cat([x, h], dim=1)), c, dim=1)
