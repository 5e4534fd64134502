"""An LSTM image captioner and three more LSTM demos (MNIST rows, hand trajectories, ConvLSTM frames)."""

__version__ = "0.1.0"
