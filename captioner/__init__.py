"""An LSTM image captioner: encoder, object and concept detectors, LSTM decoders, search."""

__version__ = "0.3.0"
