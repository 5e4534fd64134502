"""The LSTM caption decoders: Show and Tell, and Show, Attend and Tell; both can copy the
objects the encoder recognises into the caption.

**Show and Tell** (Vinyals et al. 2015): the projected image feature is the LSTM's first
input; the word embeddings of ``<start> w1 ... wn`` follow, and the outputs predict
``w1 ... wn <end>``:

    x_{-1} = W_I CNN(I),   x_t = W_e S_t,   p_{t+1} = softmax(W_o LSTM(x_t))

**Show, Attend and Tell** (Xu et al. 2015, soft attention): the LSTM starts from the
image, and at every step looks at the encoder's spatial grid a_1..a_L (7x7 cells):

    e_ti = w^T tanh(W_a a_i + W_h h_{t-1}),  alpha_t = softmax(e_t),  z_t = beta_t * sum_i alpha_ti a_i
    h_t = LSTM([W_e S_t, z_t], h_{t-1}),     beta_t = sigmoid(W_b h_{t-1})

and is trained with the doubly stochastic penalty lambda * sum_i (1 - sum_t alpha_ti)^2.

**Copying objects** (as the pointer/copy mechanisms of LSTM-C, Yao et al. 2017, and the
placeholders of DNOC, Wu et al. 2018): the last K words of the vocabulary are slots
``<obj1> .. <objK>``, one per object the encoder's classifier recognises in the image
(``objects.ImageNetClassifier``), most probable first. A slot's input embedding is its rank's
embedding plus the projection of its object word's vector (the word's classifier
weights), and its output score adds to the slot's own logit

    q(h)^T e_k + a * log p_k + b

(how well the object fits what the decoder is about to say, and how sure the classifier
is). Training captions have each mention of a recognised object replaced by its slot, so the
decoder learns where objects go and when to trust the detector; at inference a slot is
written out as its object's word, which may be a word no training caption contains
("a <obj1> sitting on a table" -> "a pizza sitting on a table").

Everything an image contributes is in a *context*: a dict of per-image tensors (dim 0 is
the image) built by ``network.CaptionNetwork.context``. Decoding is greedy or beam search, batched
over images; each returns the ids of the words, the probability the model gave each of
them, and (attention) where it looked for each (``search.py``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lstmkit.lstm import LSTMCell, lstm_gates

State = tuple[torch.Tensor, ...]   # (h, c), each (layers, rows, hidden)
Context = dict[str, torch.Tensor]  # per-row tensors, rows in dim 0


def select(ctx: Context, rows: torch.Tensor) -> Context:
    return {k: v[rows] for k, v in ctx.items()}


def packed_order(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How ``pack_padded_sequence`` orders the steps of sequences of these lengths: the row
    of every packed element (time-major, longest first) and the batch size of each step."""
    rows = torch.arange(len(lengths))[:, None].expand(-1, int(lengths.max()))
    packed = pack_padded_sequence(rows, lengths.cpu(), batch_first=True, enforce_sorted=False)
    return packed.data, packed.batch_sizes


def packed_targets(captions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The targets of a decoder's teacher-forced logits (``w1 .. wn <end>``), in packed order."""
    return pack_padded_sequence(captions[:, 1:], lengths.cpu() - 1, batch_first=True, enforce_sorted=False).data


def stacked(*linears: nn.Linear) -> nn.Linear:
    """One linear map computing several that read the same input, outputs side by side."""
    out = nn.Linear(linears[0].in_features, sum(m.out_features for m in linears))
    with torch.no_grad():
        out.weight.copy_(torch.cat([m.weight for m in linears]))
        out.bias.copy_(torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features)
                                  for m in linears]))
    return out


class ObjectSlots(nn.Module):
    """Input embeddings and output scores of the object slots (see the module docstring)."""

    def __init__(self, slots: int, object_dim: int, embed_dim: int, hidden_dim: int):
        super().__init__()
        self.slots = slots
        self.project = nn.Sequential(nn.LayerNorm(object_dim), nn.Linear(object_dim, embed_dim))
        self.query = nn.Linear(hidden_dim, embed_dim, bias=False)
        self.confidence = nn.Parameter(torch.tensor([1.0, 0.0]))  # a, b

    def context(self, word_vectors: torch.Tensor, probs: torch.Tensor) -> Context:
        """(B, K, object_dim) vectors and (B, K) probabilities of the detected words."""
        return {"objects": self.project(word_vectors), "objects_logp": probs.clamp_min(1e-12).log()}

    def prepare(self, ctx: Context) -> Context:
        """``slot_bias``: how sure the classifier is of each slot's object, ``a * log p_k`` (-inf
        for objects left out by the caller), once per caption rather than once per word."""
        logp = ctx["objects_logp"]
        confidence = self.confidence[0] * logp.clamp_min(-30.0)
        return {"slot_bias": confidence.masked_fill(logp == float("-inf"), float("-inf"))}

    def scores(self, hidden: torch.Tensor, ctx: Context, query: torch.Tensor | None = None) -> torch.Tensor:
        """(M, hidden) -> (M, K) added to the slots' logits (``query``: ``self.query(hidden)``
        when the caller computed it already)."""
        query = self.query(hidden) if query is None else query
        fit = (query[:, None, :] * ctx.get("objects_key", ctx["objects"])).sum(-1)
        return fit + ctx["slot_bias"] + self.confidence[1]


class CaptionDecoder(nn.Module):
    """What both decoders share: word (and slot) embeddings and the output layer with copy
    scores. A subclass provides ``init_state(ctx)``, ``advance(tokens, state, ctx)`` (a step
    without the output layer, which ``step`` adds) and ``forward`` (teacher forcing);
    ``search.py`` decodes with any of them."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int, num_layers: int, dropout: float, *,
                 pad_id: int = 0, start_id: int = 1, end_id: int = 2, unk_id: int | None = 3,
                 object_slots: int = 0, object_dim: int = 0):
        super().__init__()
        self.start_id, self.end_id = start_id, end_id
        self.num_layers, self.hidden_dim = num_layers, hidden_dim
        # <pad> and <start> are never a next word; <unk> is learned but not written out
        self.never_emitted = [pad_id, start_id] + ([unk_id] if unk_id is not None else [])
        self.first_slot = vocab_size - object_slots  # the slots are the vocabulary's last words
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)
        self.slots = ObjectSlots(object_slots, object_dim, embed_dim, hidden_dim) if object_slots else None

    # ------------------------------------------------------------- shared pieces

    def embed_tokens(self, tokens: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Embeddings of ``tokens`` ((M,) or (M, T), row m belonging to ``ctx`` row m); a
        slot adds its object's projected vector to its rank's embedding."""
        e = self.embed(tokens)
        if self.slots is None:
            return e
        objects = ctx["objects"]
        k = tokens - self.first_slot
        index = k.clamp(0, self.slots.slots - 1)
        if tokens.dim() == 1:  # a step: one token per row
            picked = objects[torch.arange(len(tokens), device=tokens.device), index]
            return torch.where((k >= 0)[:, None], e + picked, e)
        picked = torch.gather(objects, 1, index[..., None].expand(*index.shape, objects.shape[-1]))
        return e + torch.where((k >= 0).unsqueeze(-1), picked, torch.zeros_like(e))

    def logits(self, hidden: torch.Tensor, ctx: Context) -> torch.Tensor:
        """(M, hidden) -> (M, vocab) unnormalised scores; ``ctx`` row m belongs to row m (prepared)."""
        fused = getattr(self, "output_maps", None)  # inference: the output layer and the slots' query in one product
        if fused is not None:
            both = fused(hidden)
            logits, query = both[:, :self.out.out_features], both[:, self.out.out_features:]
        else:
            logits, query = self.out(hidden), None
        if self.slots is None:
            return logits
        if fused is not None:  # a fresh tensor of its own: the slots' scores can go in place
            logits[:, self.first_slot:] += self.slots.scores(hidden, ctx, query)
            return logits
        slots = logits[:, self.first_slot:] + self.slots.scores(hidden, ctx, query)
        return torch.cat([logits[:, :self.first_slot], slots], dim=1)

    LOGIT_KEYS = ("objects", "objects_key", "slot_bias")  # what ``logits`` reads of the context

    @classmethod
    def output_context(cls, ctx: Context) -> Context:
        """What ``log_probs`` reads of the context (the rest is the recurrence's)."""
        return {k: ctx[k] for k in (*cls.LOGIT_KEYS, "step_bias") if k in ctx}

    @classmethod
    def _output_rows(cls, ctx: Context, rows: torch.Tensor) -> Context:
        """What ``logits`` reads of the context, for each of ``rows`` (teacher forcing)."""
        return select({k: ctx[k] for k in cls.LOGIT_KEYS if k in ctx}, rows)

    def log_probs(self, hidden: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Next-word log-probabilities; ``ctx["step_bias"]`` (``prepare``) holds what the detectors
        say of words naming objects (``decoding.grounding``) and -inf for words never written."""
        logits = self.logits(hidden, ctx) + ctx["step_bias"]
        # a non-finite model (NaN weights or features) must not crash the search: NaN is impossible
        return logits.log_softmax(-1).nan_to_num(nan=float("-inf"), neginf=float("-inf"))

    def prepare(self, ctx: Context) -> Context:
        """The context with what every step would otherwise recompute (once per caption):
        ``step_bias`` (B, vocab), the words' fixed additions (``word_bias``, and -inf for
        ``never_emitted``), and the slots' ``slot_bias``."""
        if "step_bias" in ctx:
            return ctx
        first = next(iter(ctx.values()))
        bias = ctx.get("word_bias")
        bias = (first.new_zeros(len(first), self.out.out_features, dtype=torch.float) if bias is None
                else bias.clone())
        bias[:, self.never_emitted] = float("-inf")
        ctx = {**ctx, "step_bias": bias}
        if self.slots is not None and "objects_logp" in ctx:
            ctx.update(self.slots.prepare(ctx))
        return ctx

    def fuse_for_inference(self) -> None:
        """Products that read the same input, stacked into one matrix each (an inference
        copy only: ``network.CaptionNetwork.use_int8``). Each output row is computed exactly
        as before (int8 scales are per output row); a step reads its weights in fewer calls."""
        if self.slots is not None:
            self.output_maps = stacked(self.out, self.slots.query)

    def forward(self, captions: torch.Tensor, lengths: torch.Tensor, ctx: Context):
        """Teacher forcing. ``captions`` (B, T) hold ``<start> w1 .. wn <end>`` padded,
        ``lengths`` their true lengths. Returns logits (N, V) for the packed targets
        ``w1 .. wn <end>`` (see ``packed_targets``) and the attention weights (B, T-1, L)
        of each step (``None`` for decoders that do not attend)."""
        raise NotImplementedError

    def init_state(self, ctx: Context) -> State:
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, state: State, ctx: Context) -> tuple[torch.Tensor, State,
                                                                              torch.Tensor | None]:
        """One word for each row: log-probabilities (M, V) of the next word, the new state
        and the attention weights (M, L) (or None)."""
        hidden, state, weights = self.advance(tokens, state, ctx)
        return self.log_probs(hidden, ctx), state, weights

    def advance(self, tokens: torch.Tensor, state: State, ctx: Context) -> tuple[torch.Tensor, State,
                                                                                 torch.Tensor | None]:
        """``step`` without the output layer: the hidden state (M, hidden) that ``log_probs``
        reads, the new state and the attention weights (teacher forcing reads the words of
        every step through the output layer at once: ``search.force``)."""
        raise NotImplementedError


class ShowTellDecoder(CaptionDecoder):
    """Show and Tell: the image (``ctx["image"]``, (B, embed_dim)) is the first input.

    ``fused_step``: run each inference step through torch's oneDNN LSTM kernel rather than
    two matrix products (slower at small batches; the latency benchmark compares them)."""

    fused_step = False

    def __init__(self, vocab_size: int, embed_dim: int = 512, hidden_dim: int = 512, num_layers: int = 1,
                 dropout: float = 0.5, **kwargs):
        super().__init__(vocab_size, embed_dim, hidden_dim, num_layers, dropout, **kwargs)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)

    def forward(self, captions: torch.Tensor, lengths: torch.Tensor, ctx: Context):
        ctx = self.prepare(ctx)
        state = self._first_input(ctx, fused=True)
        words = self.dropout(self.embed_tokens(captions[:, :-1], ctx))
        packed = pack_padded_sequence(words, lengths.cpu() - 1, batch_first=True, enforce_sorted=False)
        hidden, _ = self.lstm(packed, state)  # nn.LSTM permutes the state to the packed order itself
        owner, _ = packed_order(lengths - 1)
        return self.logits(self.dropout(hidden.data), self._output_rows(ctx, owner.to(captions.device))), None

    def init_state(self, ctx: Context) -> State:
        """Feed the image as the first input; its output is not used."""
        return self._first_input(ctx, fused=self.training)

    def _first_input(self, ctx: Context, fused: bool) -> State:
        x = self.dropout(ctx["image"])
        if fused:
            _, state = self.lstm(x.unsqueeze(1))
            return state
        zeros = x.new_zeros(self.num_layers, x.shape[0], self.hidden_dim)
        return self._lstm_step(x, (zeros, zeros))[1]

    def advance(self, tokens, state, ctx):
        x = self.embed_tokens(tokens, ctx)
        if self.training or self.fused_step:
            hidden, state = self.lstm(x.unsqueeze(1), state)
            return hidden.squeeze(1), state, None
        hidden, state = self._lstm_step(x, state)
        return hidden, state, None

    # One time step of nn.LSTM written as two matrix products per layer. For a single step
    # the profiler showed oneDNN's RNN kernel taking about 5x the time its weights take to
    # read; this does the same arithmetic with plain addmm and lstm.lstm_gates.
    # ``fused_step = True`` asks for torch's kernel instead (the benchmarks compare both).
    def _lstm_step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, c = state
        new_h, new_c = [], []
        for layer in range(self.num_layers):
            w_ih, w_hh = getattr(self.lstm, f"weight_ih_l{layer}"), getattr(self.lstm, f"weight_hh_l{layer}")
            bias = getattr(self.lstm, f"bias_ih_l{layer}") + getattr(self.lstm, f"bias_hh_l{layer}")
            gates = torch.addmm(bias, x, w_ih.t()).addmm_(h[layer], w_hh.t())
            x, c_layer = lstm_gates(gates, c[layer])
            new_h.append(x)
            new_c.append(c_layer)
        return x, (torch.stack(new_h), torch.stack(new_c))


class AttentionDecoder(CaptionDecoder):
    """Show, Attend and Tell with soft attention over the encoder's grid.

    ``ctx["grid"]`` (B, L, D): the grid's cells projected to ``D`` (``network.CaptionNetwork``),
    and with regions the detector's boxes after them (``ctx["grid_mask"]`` (B, L) False for
    a box a photo does not have: Up-Down's attention over cells and objects, Anderson et al. 2018);
    ``ctx["image"]`` (B, embed_dim): the pooled image (and objects), which sets the initial
    state. One layer: the LSTM step is ``lstm.LSTMCell``."""

    def __init__(self, vocab_size: int, embed_dim: int = 512, hidden_dim: int = 512, num_layers: int = 1,
                 dropout: float = 0.5, *, grid_dim: int = 512, attention_dim: int = 512, **kwargs):
        if num_layers != 1:
            raise ValueError("the attention decoder has one LSTM layer")
        super().__init__(vocab_size, embed_dim, hidden_dim, num_layers, dropout, **kwargs)
        self.grid_key = nn.Linear(grid_dim, attention_dim)
        self.hidden_key = nn.Linear(hidden_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)
        self.gate = nn.Linear(hidden_dim, grid_dim)  # beta: how much of the context to let in
        self.init_h = nn.Linear(embed_dim, hidden_dim)
        self.init_c = nn.Linear(embed_dim, hidden_dim)
        self.cell = LSTMCell(embed_dim + grid_dim, hidden_dim)

    def init_state(self, ctx: Context) -> State:
        image = ctx["image"]
        return torch.tanh(self.init_h(image))[None], torch.tanh(self.init_c(image))[None]

    def prepare(self, ctx: Context) -> Context:
        """The grid's attention keys W_a a_i and which entries a photo lacks, once per caption
        rather than once per word (and the shared ``CaptionDecoder.prepare``)."""
        if "grid_keys" in ctx:
            return ctx
        ctx = {**super().prepare(ctx), "grid_keys": self.grid_key(ctx["grid"])}
        if "grid_mask" in ctx:  # regions: the detector's boxes after the cells, absent ones never attended
            ctx["grid_blocked"] = ~ctx["grid_mask"]
        return ctx

    def fuse_for_inference(self) -> None:
        super().fuse_for_inference()
        self.hidden_maps = stacked(self.hidden_key, self.gate, self.cell.hidden_map)

    def _from_hidden(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """W_h h (the attention's query), W_b h (the gate) and the LSTM's W_h* h + b_h*."""
        fused = getattr(self, "hidden_maps", None)
        if fused is None:
            return self.hidden_key(h), self.gate(h), self.cell.hidden_map(h)
        return fused(h).split([self.hidden_key.out_features, self.gate.out_features,
                               self.cell.hidden_map.out_features], 1)

    def _step(self, x: torch.Tensor, state: State, ctx: Context):
        """One LSTM step with attention, over a prepared ``ctx``: (h, state, attention weights)."""
        h, c = state[0][0], state[1][0]
        key, gate, hidden = self._from_hidden(h)
        scores = self.score(torch.tanh(ctx["grid_keys"] + key[:, None, :])).squeeze(-1)
        if "grid_blocked" in ctx:
            scores = scores.masked_fill(ctx["grid_blocked"], float("-inf"))
        weights = scores.softmax(-1)
        context = torch.sigmoid(gate) * torch.bmm(weights[:, None, :], ctx["grid"]).squeeze(1)
        h, c = lstm_gates(self.cell.input_map(torch.cat([x, context], 1)) + hidden, c)
        return h, (h[None], c[None]), weights

    def advance(self, tokens, state, ctx):
        return self._step(self.embed_tokens(tokens, ctx), state, ctx)

    def forward(self, captions: torch.Tensor, lengths: torch.Tensor, ctx: Context):
        ctx = self.prepare(ctx)
        words = self.dropout(self.embed_tokens(captions[:, :-1], ctx))
        owner, batch_sizes = packed_order(lengths - 1)
        owner = owner.to(captions.device)
        order = owner[: int(batch_sizes[0])]  # rows, longest caption first, as packing orders them
        state = self.init_state(select(ctx, order))
        sorted_ctx = select(ctx, order)
        hidden, weights = [], torch.zeros(*words.shape[:2], ctx["grid"].shape[1], device=words.device)
        for t, size in enumerate(batch_sizes.tolist()):
            state = (state[0][:, :size], state[1][:, :size])
            step_ctx = {k: v[:size] for k, v in sorted_ctx.items()}
            h, state, w = self._step(words[order[:size], t], state, step_ctx)
            hidden.append(h)
            weights[order[:size], t] = w
        return self.logits(self.dropout(torch.cat(hidden)), self._output_rows(ctx, owner)), weights


DECODERS = {"show_tell": ShowTellDecoder, "attention": AttentionDecoder}
