"""What the LSTM demos and the captioner share, and nothing of either: LSTM cells
(``lstm``), checkpoints (``checkpoint``), the training loop (``loop``, ``runtools``), devices
and precision (``devices``), downloads, the safe image loader (``images``) and the shape of
a served model (``service``)."""
