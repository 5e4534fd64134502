"""The LSTM caption decoder of Show and Tell (Vinyals et al. 2015).

The projected image feature is the LSTM's first input; the word embeddings of
``<start> w1 ... wn`` follow, and the outputs predict ``w1 ... wn <end>``:

    x_{-1} = W_I CNN(I),   x_t = W_e S_t,   p_{t+1} = softmax(W_o LSTM(x_t))

Training feeds the true words (teacher forcing) as one packed sequence. Inference is
greedy or beam search, both batched over images; each returns the ids of the words and
the probability the model gave each of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

State = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Decoded:
    """One decoded caption: word ids (without ``<end>``), the probability of each of those
    words, and the sequence's length-normalised log-probability (``<end>`` included)."""

    ids: list[int]
    probabilities: list[float]
    score: float


class CaptionDecoder(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int = 512, hidden_dim: int = 512,
                 num_layers: int = 1, dropout: float = 0.5, *, pad_id: int = 0, start_id: int = 1, end_id: int = 2,
                 unk_id: int | None = 3):
        super().__init__()
        self.start_id, self.end_id = start_id, end_id
        # <pad> and <start> are never a next word; <unk> is learned but not written out
        self.never_emitted = [pad_id, start_id] + ([unk_id] if unk_id is not None else [])
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)

    # ------------------------------------------------------------------ training

    def forward(self, image_embeddings: torch.Tensor, captions: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
        """Teacher forcing. ``captions`` (B, T) hold ``<start> w1 .. wn <end>`` padded,
        ``lengths`` their true lengths. Returns logits (N, V) for the packed targets
        ``w1 .. wn <end>`` (see ``packed_targets``)."""
        state = self.init_state(image_embeddings)
        words = self.dropout(self.embed(captions[:, :-1]))
        packed = pack_padded_sequence(words, lengths.cpu() - 1, batch_first=True, enforce_sorted=False)
        hidden, _ = self.lstm(packed, state)  # nn.LSTM permutes the state to the packed order itself
        return self.out(self.dropout(hidden.data))

    @staticmethod
    def packed_targets(captions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The targets of ``forward``'s logits, in the same packed order."""
        return pack_padded_sequence(captions[:, 1:], lengths.cpu() - 1, batch_first=True,
                                    enforce_sorted=False).data

    # ----------------------------------------------------------------- inference

    def init_state(self, image_embeddings: torch.Tensor) -> State:
        """Feed the image as the first input; its output is not used."""
        x = self.dropout(image_embeddings)
        if self.training or not self.lean_steps:
            _, state = self.lstm(x.unsqueeze(1))
            return state
        zeros = x.new_zeros(self.lstm.num_layers, x.shape[0], self.lstm.hidden_size)
        return self._lstm_step(x, (zeros, zeros))[1]

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One word for each row: log-probabilities (M, V) of the next word."""
        if self.training or not self.lean_steps:
            hidden, state = self.lstm(self.embed(tokens).unsqueeze(1), state)
            hidden = hidden.squeeze(1)
        else:
            hidden, state = self._lstm_step(self.embed(tokens), state)
        logits = self.out(hidden)
        logits[:, self.never_emitted] = float("-inf")
        return logits.log_softmax(-1), state

    # One time step of nn.LSTM written as two matrix products per layer. For a single step
    # the profiler showed oneDNN's RNN kernel taking about 5x the time its weights take to
    # read; this does the same arithmetic (gates i, f, g, o) with plain addmm.
    lean_steps = True

    def _lstm_step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, c = state
        new_h, new_c = [], []
        for layer in range(self.lstm.num_layers):
            w_ih, w_hh = getattr(self.lstm, f"weight_ih_l{layer}"), getattr(self.lstm, f"weight_hh_l{layer}")
            bias = getattr(self.lstm, f"bias_ih_l{layer}") + getattr(self.lstm, f"bias_hh_l{layer}")
            gates = torch.addmm(bias, x, w_ih.t()).addmm_(h[layer], w_hh.t())
            i, f, g, o = gates.chunk(4, 1)
            c_layer = torch.sigmoid(f) * c[layer] + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c_layer)
            new_h.append(x)
            new_c.append(c_layer)
        return x, (torch.stack(new_h), torch.stack(new_c))

    @torch.inference_mode()
    def greedy(self, image_embeddings: torch.Tensor, max_length: int = 20) -> list[Decoded]:
        """The most probable word at every step, for all images at once. Stops as soon as
        every caption has ended (or after ``max_length`` words)."""
        batch = image_embeddings.shape[0]
        state = self.init_state(image_embeddings)
        tokens = torch.full((batch,), self.start_id, dtype=torch.long, device=image_embeddings.device)
        ids, logps = [], []
        ended = torch.zeros(batch, dtype=torch.bool, device=tokens.device)
        for _ in range(max_length):
            logp, state = self.step(tokens, state)
            best_logp, tokens = logp.max(-1)
            ids.append(tokens)
            logps.append(best_logp)
            ended |= tokens == self.end_id
            if bool(ended.all()):
                break
        ids_t, logps_t = torch.stack(ids, 1).tolist(), torch.stack(logps, 1).tolist()
        return [_finish(seq, lps, self.end_id, alpha=1.0) for seq, lps in zip(ids_t, logps_t)]

    @torch.no_grad()
    def sample(self, image_embeddings: torch.Tensor, n: int = 5, max_length: int = 16,
               temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` captions per image drawn from the model's distribution, for self-critical
        training. Returns token ids (B * n, T) as ``<start> w1 .. wk <end>`` padded with
        ``<pad>`` (0), image-major, and their lengths (captions cut at ``max_length``
        words get no ``<end>``)."""
        embeddings = image_embeddings.repeat_interleave(n, dim=0)
        rows = embeddings.shape[0]
        state = self.init_state(embeddings)
        tokens = torch.full((rows,), self.start_id, dtype=torch.long, device=embeddings.device)
        out = [tokens]
        alive = torch.ones(rows, dtype=torch.bool, device=tokens.device)
        lengths = torch.ones(rows, dtype=torch.long, device=tokens.device)
        for _ in range(max_length):
            logp, state = self.step(tokens, state)
            tokens = torch.multinomial((logp / temperature).softmax(-1), 1).squeeze(1)
            tokens = torch.where(alive, tokens, torch.zeros_like(tokens))
            out.append(tokens)
            lengths += alive.long()
            alive &= tokens != self.end_id
            if not bool(alive.any()):
                break
        return torch.stack(out, 1), lengths

    @torch.inference_mode()
    def beam_search(self, image_embeddings: torch.Tensor, beam_size: int = 3, max_length: int = 20,
                    length_alpha: float = 1.0) -> list[Decoded]:
        """Beam search over all images at once.

        Every step each image keeps its ``beam_size - finished`` best continuations by
        total log-probability; a continuation that picks ``<end>`` is finished and leaves
        the beam, which shrinks. Among the finished captions the best by
        ``log p / length ** length_alpha`` wins. With ``beam_size=1`` this is exactly
        greedy decoding.
        """
        if beam_size < 1:
            raise ValueError("beam_size must be at least 1")
        device = image_embeddings.device
        batch, n = image_embeddings.shape[0], beam_size
        state = self.init_state(image_embeddings)
        image = torch.arange(batch, device=device)  # image of each live hypothesis
        slot = torch.zeros(batch, dtype=torch.long, device=device)  # its place in that image's beam
        score = torch.zeros(batch, device=device)
        seqs = torch.empty(batch, 0, dtype=torch.long, device=device)
        seq_logps = torch.empty(batch, 0, device=device)
        tokens = torch.full((batch,), self.start_id, dtype=torch.long, device=device)
        finished: list[list[Decoded]] = [[] for _ in range(batch)]
        n_finished = torch.zeros(batch, dtype=torch.long, device=device)

        for t in range(max_length):
            logp, state = self.step(tokens, state)
            # The best n words of each hypothesis hold the image's best n continuations.
            cand_logp, cand_word = logp.topk(min(n, logp.shape[1]), dim=1)
            width = cand_logp.shape[1]
            grid = torch.full((batch, n, width), float("-inf"), device=device)
            grid[image, slot] = score[:, None] + cand_logp
            words_grid = torch.zeros((batch, n, width), dtype=torch.long, device=device)
            words_grid[image, slot] = cand_word
            row_of = torch.full((batch, n), -1, dtype=torch.long, device=device)
            row_of[image, slot] = torch.arange(len(image), device=device)

            top_score, top_index = grid.view(batch, -1).topk(n, dim=1)
            rank = torch.arange(n, device=device)[None]
            valid = (rank < (n - n_finished)[:, None]) & torch.isfinite(top_score)
            src_row = row_of.gather(1, top_index // width).clamp_min(0)
            word = words_grid.view(batch, -1).gather(1, top_index)
            ends = valid & ((word == self.end_id) | (t == max_length - 1))

            for b, k in ends.nonzero().tolist():
                row, w = src_row[b, k], word[b, k]
                ids = seqs[row].tolist() + [int(w)]
                lps = seq_logps[row].tolist() + [float(logp[row, w])]
                finished[b].append(_finish(ids, lps, self.end_id, length_alpha))
            n_finished += ends.sum(1)

            live = valid & ~ends
            if not bool(live.any()):
                break
            b_idx, k_idx = live.nonzero(as_tuple=True)
            rows, words = src_row[b_idx, k_idx], word[b_idx, k_idx]
            image, slot = b_idx, (live.cumsum(1) - 1)[b_idx, k_idx]
            score = top_score[b_idx, k_idx]
            seqs = torch.cat([seqs[rows], words[:, None]], 1)
            seq_logps = torch.cat([seq_logps[rows], logp[rows, words][:, None]], 1)
            state = (state[0][:, rows], state[1][:, rows])
            tokens = words

        return [max(f, key=lambda d: d.score) for f in finished]


def _finish(ids: list[int], logps: list[float], end_id: int, alpha: float) -> Decoded:
    """Cut a decoded sequence at its first ``<end>`` and score it."""
    if end_id in ids:
        cut = ids.index(end_id)
        total, length = sum(logps[: cut + 1]), cut + 1
    else:
        cut = len(ids)
        total, length = sum(logps), len(ids)
    probs = torch.tensor(logps[:cut], dtype=torch.float64).exp().tolist()
    return Decoded(ids[:cut], probs, total / max(length, 1) ** alpha)
