"""Our hand-written LSTM cells against torch's, to 1e-5, and the textbook toy."""

import torch
from torch import nn

from lstmkit.lstm import LSTM, ConvLSTMCell, LSTMCell


def _grads(module):
    return [p.grad.clone() for p in module.parameters()]


def test_lstm_cell_matches_torch_outputs_and_gradients():
    torch.manual_seed(0)
    ref = nn.LSTMCell(7, 11).double()
    ours = LSTMCell.from_torch(ref).double()
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    h0, c0 = torch.randn(5, 11, dtype=torch.float64), torch.randn(5, 11, dtype=torch.float64)
    h_ref, c_ref = ref(x, (h0, c0))
    h, c = ours(x, (h0, c0))
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(c, c_ref, atol=1e-5, rtol=0)
    (h_ref.sum() + (c_ref ** 2).sum()).backward()
    grad_x_ref = x.grad.clone()
    x.grad = None
    (h.sum() + (c ** 2).sum()).backward()
    torch.testing.assert_close(x.grad, grad_x_ref, atol=1e-5, rtol=0)
    ref_grads = dict(zip(["weight_ih", "weight_hh", "bias_ih", "bias_hh"],
                         [ref.weight_ih.grad, ref.weight_hh.grad, ref.bias_ih.grad, ref.bias_hh.grad]))
    torch.testing.assert_close(ours.input_map.weight.grad, ref_grads["weight_ih"], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.hidden_map.weight.grad, ref_grads["weight_hh"], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.input_map.bias.grad, ref_grads["bias_ih"], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.hidden_map.bias.grad, ref_grads["bias_hh"], atol=1e-5, rtol=0)


def test_lstm_cell_in_float32_and_without_state():
    ref = nn.LSTMCell(4, 6)
    ours = LSTMCell.from_torch(ref)
    x = torch.randn(3, 4)
    for a, b in zip(ours(x), ref(x)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_stacked_lstm_matches_torch_lstm_outputs_and_gradients():
    torch.manual_seed(1)
    ref = nn.LSTM(5, 9, num_layers=3, batch_first=True).double()
    ours = LSTM.from_torch(ref).double()
    x = torch.randn(4, 13, 5, dtype=torch.float64)
    state = (torch.randn(3, 4, 9, dtype=torch.float64), torch.randn(3, 4, 9, dtype=torch.float64))
    out_ref, (h_ref, c_ref) = ref(x, state)
    out, (h, c) = ours(x, state)
    for a, b in [(out, out_ref), (h, h_ref), (c, c_ref)]:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    loss_ref = out_ref.pow(2).mean() + h_ref.sum()
    loss_ref.backward()
    (out.pow(2).mean() + h.sum()).backward()
    for layer, cell in enumerate(ours.cells):
        torch.testing.assert_close(cell.input_map.weight.grad, getattr(ref, f"weight_ih_l{layer}").grad,
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(cell.hidden_map.weight.grad, getattr(ref, f"weight_hh_l{layer}").grad,
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(cell.hidden_map.bias.grad, getattr(ref, f"bias_hh_l{layer}").grad,
                                   atol=1e-5, rtol=0)


def test_to_torch_round_trip_gives_the_same_outputs():
    ours = LSTM(6, 8, num_layers=2).eval()
    fused = ours.to_torch().eval()
    x = torch.randn(3, 10, 6)
    torch.testing.assert_close(ours(x)[0], fused(x)[0], atol=1e-5, rtol=0)


def test_conv_lstm_cell_with_1x1_kernel_on_1x1_grid_is_the_lstm_cell():
    torch.manual_seed(2)
    cell = LSTMCell(3, 5)
    conv = ConvLSTMCell(3, 5, kernel_size=1)
    with torch.no_grad():
        weight = torch.cat([cell.input_map.weight, cell.hidden_map.weight], dim=1)  # (4H, I+H)
        conv.conv.weight.copy_(weight[:, :, None, None])
        conv.conv.bias.copy_(cell.input_map.bias + cell.hidden_map.bias)
    x, h0, c0 = torch.randn(4, 3), torch.randn(4, 5), torch.randn(4, 5)
    h, c = cell(x, (h0, c0))
    hc, cc = conv(x[:, :, None, None], (h0[:, :, None, None], c0[:, :, None, None]))
    torch.testing.assert_close(hc[:, :, 0, 0], h, atol=1e-6, rtol=0)
    torch.testing.assert_close(cc[:, :, 0, 0], c, atol=1e-6, rtol=0)


def test_conv_lstm_init_hidden_and_shapes():
    conv = ConvLSTMCell(2, 7, kernel_size=3)
    h, c = conv.init_hidden(3, (8, 6))
    assert h.shape == c.shape == (3, 7, 8, 6) and not h.any()
    h, c = conv(torch.randn(3, 2, 8, 6), (h, c))
    assert h.shape == (3, 7, 8, 6)
    h2, _ = conv(torch.randn(3, 2, 8, 6))  # no state: zeros
    assert h2.shape == (3, 7, 8, 6)


def test_textbook_toy_learns_to_count():
    """Predict the next number of a counting sequence: [5, 6, 7, 8] -> about [6, 7, 8, 9]."""
    torch.manual_seed(0)
    lstm, head = LSTM(1, 32), nn.Linear(32, 1)
    params = list(lstm.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    scale = 20.0
    for _ in range(300):
        starts = torch.randint(0, 15, (64, 1)).float()
        seq = starts + torch.arange(5).float()  # 5 consecutive numbers
        x, y = seq[:, :4, None] / scale, seq[:, 1:, None] / scale
        loss = nn.functional.mse_loss(head(lstm(x)[0]), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        pred = head(lstm(torch.tensor([[[5.0], [6.0], [7.0], [8.0]]]) / scale)[0]).squeeze() * scale
    torch.testing.assert_close(pred, torch.tensor([6.0, 7.0, 8.0, 9.0]), atol=0.3, rtol=0)
