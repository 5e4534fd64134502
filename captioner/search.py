"""Decoding over any decoder's ``step``: greedy, beam search (optionally constrained) and
sampling, all batched over images.

A decoder (``decoder.py``) offers ``prepare(ctx)`` (per-caption precomputation),
``init_state(ctx)`` and ``step(tokens, state, ctx) -> (log p, state, attention or
None)``; its ``start_id`` and ``end_id`` say where captions begin and end. Nothing here
knows which network it drives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from captioner.claims import ClaimTable, closes_phrase
from captioner.decoder import CaptionDecoder, Context, select
from captioner.rules import CaptionRules, as_written, repeat_bans


@dataclass
class Decoded:
    """One decoded caption: word ids (without ``<end>``), the probability of each of those
    words, the sequence's length-normalised log-probability (``<end>`` included) and, from
    an attention decoder, the attention weights over the grid for each word."""

    ids: list[int]
    probabilities: list[float]
    score: float
    attention: list[list[float]] | None = None


def finish(ids: list[int], logps: list[float], end_id: int, alpha: float,
           attention: list[list[float]] | None = None) -> Decoded:
    """Cut a decoded sequence at its first ``<end>`` and score it by ``log p / length ** alpha``."""
    if end_id in ids:
        cut = ids.index(end_id)
        total, length = sum(logps[: cut + 1]), cut + 1
    else:
        cut = len(ids)
        total, length = sum(logps), len(ids)
    probs = torch.tensor(logps[:cut], dtype=torch.float64).exp().tolist()
    return Decoded(ids[:cut], probs, total / max(length, 1) ** alpha,
                   attention[:cut] if attention is not None else None)


class ClaimBans:
    """Claims no person states, refused while the search writes (``DecodingConfig.claims_in_search``):
    a caption whose words so far end in the object of a claim the human captions state fewer
    than ``least`` times (``ClaimTable.closed_unseen``) may not close that phrase next (a
    relation, a break, a verb or the end: ``claims.closes_phrase``), so the beam goes on with
    its next best caption rather than finish one that ``Writer.truest`` would cut."""

    def __init__(self, words: Sequence[str], end_id: int, table: ClaimTable, least: int):
        self.words, self.table, self.least = list(words), table, least
        self.closers = torch.tensor([closes_phrase(w) for w in self.words])
        self.closers[end_id] = True
        self.counting = {i for i, w in enumerate(self.words) if not closes_phrase("of", w)}  # "a group" + "of"
        self.of = self.words.index("of") if "of" in self.words else None
        self._seen: dict[tuple[int, ...], bool] = {}

    def add_bans(self, ban: torch.Tensor, seqs: torch.Tensor, slot_words: torch.Tensor | None) -> None:
        """Count into ``ban`` (rows, V) the closing words of each row whose words so far
        (``seqs``; object slots written as ``slot_words``) end in an unseen claim's object.
        The claims are read in Python (``claims.parse``): on a GPU each step waits for the
        words once; a row holding a slot whose object has no word here is not checked (its
        claims cannot be read)."""
        if not seqs.shape[1]:
            return
        seqs = as_written(seqs, slot_words, ban.shape[1] - (0 if slot_words is None else slot_words.shape[1]))
        refused, counting = [], []
        for ids in seqs.tolist():
            key = tuple(ids)
            if key not in self._seen:
                self._seen[key] = (all(i < len(self.words) for i in ids)
                                   and self.table.closed_unseen([self.words[i] for i in ids], self.least))
            refused.append(self._seen[key])
            counting.append(ids[-1] in self.counting)
        if any(refused):
            rows = torch.tensor(refused, device=ban.device)
            closing = self.closers.to(ban.device)[None, :].repeat(len(rows), 1)
            if self.of is not None:  # "a group" may go on with "of": the claim is then of what it counts
                closing[torch.tensor(counting, device=ban.device), self.of] = False
            ban[:, :closing.shape[1]] += (rows[:, None] & closing).to(ban.dtype)


@dataclass
class Constraints:
    """The caption rules a search applies at every step (``rules.CaptionRules``):
    ``person_ok`` (images,) whether each image may name a person (None: all may), and
    whether the rules on repeats and modifiers hold (``degenerate``)."""

    rules: CaptionRules
    person_ok: torch.Tensor | None = None
    degenerate: bool = True
    slot_words: torch.Tensor | None = None  # (images, K) the word each object slot is written as (-1: none)
    claims: ClaimBans | None = None  # claims no person states, refused as they are written


class Bans:
    """Every word a search may not write next, as one (rows, V) table per step: the caption
    rules (``Constraints``) and the n-gram ban (``rules.repeat_bans``). What is fixed for a caption (the person
    rule, each slot's word) goes into the context once (``context``), so it follows the
    rows wherever the search moves them."""

    def __init__(self, constraints: Constraints | None, block_ngram: int, first_slot: int | None):
        self.constraints, self.block_ngram, self.first_slot = constraints, block_ngram, first_slot

    @property
    def active(self) -> bool:
        return self.constraints is not None or self.block_ngram >= 2

    def context(self, ctx: Context, vocab: int) -> Context:
        c = self.constraints
        if c is None:
            return ctx
        device = next(iter(ctx.values())).device
        ctx = dict(ctx)
        slot_words = None if c.slot_words is None else c.slot_words.to(device)
        if c.person_ok is not None:
            ctx["search_person_ban"] = c.rules.person_ban(c.person_ok.to(device), slot_words, vocab)
        if slot_words is not None and (c.degenerate or c.claims is not None):
            ctx["search_slot_words"] = slot_words
        return ctx

    def apply(self, logp: torch.Tensor, seqs: torch.Tensor, ctx: Context) -> torch.Tensor:
        """``logp`` (rows, V) of rows whose words so far are ``seqs``, ``ctx`` row for row."""
        if not self.active:
            return logp
        person = ctx.get("search_person_ban")
        ban = torch.zeros_like(logp) if person is None else person.clone()
        if self.block_ngram >= 2:
            repeat_bans(ban, seqs, self.block_ngram, first_slot=self.first_slot)
        if self.constraints is not None and self.constraints.degenerate:
            self.constraints.rules.add_bans(ban, seqs, ctx.get("search_slot_words"))
        if self.constraints is not None and self.constraints.claims is not None:
            self.constraints.claims.add_bans(ban, seqs, ctx.get("search_slot_words"))
        return logp.masked_fill(ban > 0, float("-inf"))


def _rows(ctx: Context) -> int:
    return len(next(iter(ctx.values())))


@torch.inference_mode()
def greedy(decoder: CaptionDecoder, ctx: Context, max_length: int = 20, block_ngram: int = 0,
           constraints: Constraints | None = None) -> list[Decoded]:
    """The most probable word at every step, for all images at once (``decoding.decode``
    runs it for a beam of one when no word is required). Stops as soon as every caption has
    ended (or after ``max_length`` words). ``block_ngram``: no n-gram twice;
    ``constraints``: the caption rules."""
    batch = _rows(ctx)
    ctx = decoder.prepare(ctx)
    state = decoder.init_state(ctx)
    device = state[0].device
    bans = Bans(constraints, block_ngram, decoder.first_slot)
    ctx = bans.context(ctx, decoder.out.out_features)
    tokens = torch.full((batch,), decoder.start_id, dtype=torch.long, device=device)
    seqs = tokens.new_zeros(batch, 0)
    logps, weights = [], []
    for _ in range(max_length):
        logp, state, attention = decoder.step(tokens, state, ctx)
        best_logp, tokens = bans.apply(logp, seqs, ctx).max(-1)
        seqs = torch.cat([seqs, tokens[:, None]], 1)
        logps.append(best_logp)
        if attention is not None:
            weights.append(attention)
        if bool((seqs == decoder.end_id).any(1).all()):
            break
    ids_t, logps_t = seqs.tolist(), torch.stack(logps, 1).tolist()
    attn = torch.stack(weights, 1).tolist() if weights else [None] * batch
    return [finish(seq, lps, decoder.end_id, 1.0, a) for seq, lps, a in zip(ids_t, logps_t, attn)]


@torch.inference_mode()
def force(decoder: CaptionDecoder, ctx: Context, seqs: list[list[int]], alpha: float = 1.0) -> list[Decoded]:
    """Each row's given words, teacher-forced, then ``<end>``: the probability the decoder
    gives each word and, from an attention decoder, where it looked for it (a caption that
    decoding changed after the search is scored by the decoder itself, never guessed)."""
    rows = _rows(ctx)
    ctx = decoder.prepare(ctx)
    state = decoder.init_state(ctx)
    device = state[0].device
    length = max(len(s) for s in seqs) + 1
    ids = torch.full((rows, length), decoder.end_id, dtype=torch.long, device=device)
    for r, seq in enumerate(seqs):
        ids[r, :len(seq)] = torch.tensor(seq, dtype=torch.long, device=device)
    tokens = torch.full((rows,), decoder.start_id, dtype=torch.long, device=device)
    hidden, weights = [], []
    for t in range(length):
        h, state, attention = decoder.advance(tokens, state, ctx)
        hidden.append(h)
        if attention is not None:
            weights.append(attention)
        tokens = ids[:, t]
    # the output layer once over every step's rows (step-major), not once a step
    every = torch.arange(rows, device=device).repeat(length)
    logp = decoder.log_probs(torch.cat(hidden), select(decoder.output_context(ctx), every))
    logps = logp.gather(1, ids.T.reshape(-1, 1)).view(length, rows).T
    attn = torch.stack(weights, 1).tolist() if weights else [None] * rows
    return [finish(seq, lps, decoder.end_id, alpha, a)
            for seq, lps, a in zip(ids.tolist(), logps.tolist(), attn)]


class Samples(NamedTuple):
    """``sample``'s captions: token ids (B * n, T + 1) as ``<start> w1 .. wk <end>`` padded
    with ``<pad>`` (0), image-major; their lengths (``<start>`` included; captions cut at
    ``max_length`` words get no ``<end>``); and ``banned`` (B * n, T, vocab), the words each
    step could not write (the bans and the -inf of ``step_bias``): the distribution sampled
    from is the decoder's over the other words, renormalised."""

    ids: torch.Tensor
    lengths: torch.Tensor
    banned: torch.Tensor


@torch.no_grad()
def sample(decoder: CaptionDecoder, ctx: Context, n: int = 5, max_length: int = 16,
           temperature: float = 1.0, block_ngram: int = 0, constraints: Constraints | None = None) -> Samples:
    """``n`` captions per image drawn from the model's distribution, for self-critical
    training, under the same bans the searches apply (``block_ngram``, ``constraints``:
    the caption rules), so that what is sampled is what decoding could write."""
    batch = _rows(ctx)
    ctx = decoder.prepare(ctx)
    bans = Bans(constraints, block_ngram, decoder.first_slot)
    ctx = bans.context(ctx, decoder.out.out_features)
    ctx = select(ctx, torch.arange(batch, device=next(iter(ctx.values())).device).repeat_interleave(n))
    rows = batch * n
    state = decoder.init_state(ctx)
    device = state[0].device
    tokens = torch.full((rows,), decoder.start_id, dtype=torch.long, device=device)
    out = [tokens]
    seqs = tokens.new_zeros(rows, 0)
    alive = torch.ones(rows, dtype=torch.bool, device=device)
    lengths = torch.ones(rows, dtype=torch.long, device=device)
    banned = []
    for _ in range(max_length):
        logp, state, _ = decoder.step(tokens, state, ctx)
        logp = bans.apply(logp, seqs, ctx)
        stuck = torch.isinf(logp).all(-1)  # every word banned (a finished row's nonsense): anything, then <pad>
        banned.append(torch.isinf(logp) & ~stuck[:, None])
        logp = logp.masked_fill(stuck[:, None], 0.0)
        tokens = torch.multinomial((logp / temperature).softmax(-1), 1).squeeze(1)
        seqs = torch.cat([seqs, tokens[:, None]], 1)
        tokens = torch.where(alive, tokens, torch.zeros_like(tokens))
        out.append(tokens)
        lengths += alive.long()
        alive &= tokens != decoder.end_id
        if not bool(alive.any()):
            break
    return Samples(torch.stack(out, 1), lengths, torch.stack(banned, 1))


# ------------------------------------------------------------------------ beam search
#
# Every live hypothesis is a row. Rows belong to beams: beam g = 2 * image + done, where
# done says the caption holds its required token (or needs none). Each step, each beam
# keeps its best ``beam_size - finished`` continuations; a continuation that picks <end>
# (or reaches ``max_length``) is finished and leaves the beam, which shrinks.


@dataclass
class _Beams:
    group: torch.Tensor         # (rows,) the beam of each row
    score: torch.Tensor         # (rows,) total log-probability
    seqs: torch.Tensor          # (rows, t) words so far
    logps: torch.Tensor         # (rows, t) each word's log-probability
    attention: torch.Tensor | None
    tokens: torch.Tensor        # (rows,) the last word


def _candidates(logp: torch.Tensor, beams: _Beams, required: torch.Tensor | None, n: int):
    """Each row offers its best ``n`` words to its own beam (the required words aside, while
    it waits for one), and each required word to the beam of captions that hold one. Written
    without data-dependent shapes: on a GPU every such shape waits for the device.
    ``required`` (rows, S): each row's image's required words (any one of them will do; -1:
    none; None: no image has any). Returns flat (score, word, row, beam) of every candidate."""
    group = beams.group
    if required is None:
        cand_logp, cand_word = logp.topk(min(n, logp.shape[1]), dim=1)
        k = cand_word.shape[1]
        rows = torch.arange(len(group), device=logp.device).repeat_interleave(k)
        return (beams.score[:, None] + cand_logp).flatten(), cand_word.flatten(), rows, group.repeat_interleave(k)
    waiting = ((group & 1) == 0)[:, None] & (required >= 0)
    extra_word = required.clamp_min(0)
    extra_logp = logp.gather(1, extra_word)
    ranked = logp.scatter(1, extra_word, torch.where(waiting, float("-inf"), extra_logp))
    cand_logp, cand_word = ranked.topk(min(n, logp.shape[1]), dim=1)
    k = cand_word.shape[1]
    cand_logp = torch.cat([cand_logp, extra_logp.masked_fill(~waiting, float("-inf"))], 1)
    cand_word = torch.cat([cand_word, extra_word], 1)
    cand_group = torch.cat([group[:, None].expand(-1, k), (group | 1)[:, None].expand(-1, extra_word.shape[1])], 1)
    rows = torch.arange(len(group), device=logp.device)[:, None].expand_as(cand_word)
    return ((beams.score[:, None] + cand_logp).flatten(), cand_word.flatten(), rows.flatten(),
            cand_group.flatten())


def _best_per_beam(score: torch.Tensor, group: torch.Tensor, room: torch.Tensor) -> torch.Tensor:
    """Indices of the best candidates of each beam, at most ``room[beam]`` of them, finite
    scores only: sorted by score, then (stably) by beam."""
    order = score.argsort(descending=True, stable=True)
    order = order[group[order].argsort(stable=True)]
    g_sorted = group[order]
    rank = torch.arange(len(order), device=score.device) - torch.searchsorted(g_sorted, g_sorted, right=False)
    return order[(rank < room[g_sorted]) & torch.isfinite(score[order])]


def beam_search(decoder: CaptionDecoder, ctx: Context, beam_size: int = 3, max_length: int = 20,
                length_alpha: float = 1.0, must_include: torch.Tensor | None = None,
                block_ngram: int = 0, constraints: Constraints | None = None) -> list[Decoded]:
    """Each image's best caption of ``beam_alternatives``: the best of the winning beam."""
    return [alts[0] for alts in beam_alternatives(decoder, ctx, beam_size, max_length, length_alpha, must_include,
                                                  block_ngram, constraints)]


@torch.inference_mode()
def beam_alternatives(decoder: CaptionDecoder, ctx: Context, beam_size: int = 3, max_length: int = 20,
                      length_alpha: float = 1.0, must_include: torch.Tensor | None = None,
                      block_ngram: int = 0, constraints: Constraints | None = None) -> list[list[Decoded]]:
    """Beam search over all images at once, optionally constrained: each image's finished
    captions, best first (``beam_search`` keeps the first).

    Among the finished captions the best by ``log p / length ** length_alpha`` wins. With
    ``beam_size=1`` and no constraint this is exactly greedy decoding.

    ``must_include`` (B,) or (B, S): a token each image's caption must contain, or several
    of which it must contain one ("giraffe" or "giraffes"; -1: none). This is constrained
    beam search with one constraint (Anderson et al. 2017): an image has two beams, captions
    without the token yet and captions with it; a caption moves from the first to the
    second when it writes the token. The best finished caption of the second
    beam wins; only if it has none, the first beam's. ``block_ngram``: no caption holds an
    n-gram twice (``rules.repeat_bans``). ``constraints``: the caption rules; a continuation
    that breaks one is never a candidate, so the beam takes the next best.
    """
    if beam_size < 1:
        raise ValueError("beam_size must be at least 1")
    ctx = decoder.prepare(ctx)
    state = decoder.init_state(ctx)
    device = state[0].device
    batch = state[0].shape[1]
    must = (torch.full((batch,), -1, dtype=torch.long) if must_include is None else must_include).to(device)
    must = must[:, None] if must.dim() == 1 else must
    bans = Bans(constraints, block_ngram, decoder.first_slot)
    ctx = bans.context(ctx, decoder.out.out_features)
    if bool((must >= 0).any()):  # the required words follow the rows, like the rest of the context
        ctx["search_required"] = must
    beams = _Beams(group=torch.arange(batch, device=device) * 2 + (must < 0).all(1).long(),
                   score=torch.zeros(batch, device=device), seqs=torch.empty(batch, 0, dtype=torch.long, device=device),
                   logps=torch.empty(batch, 0, device=device), attention=None,
                   tokens=torch.full((batch,), decoder.start_id, dtype=torch.long, device=device))
    image = beams.group // 2  # the image of each row of ``ctx``
    finished: list[list[Decoded]] = [[] for _ in range(2 * batch)]
    n_finished = torch.zeros(2 * batch, dtype=torch.long, device=device)
    for t in range(max_length):
        logp, state, attention = decoder.step(beams.tokens, state, ctx)
        logp = bans.apply(logp, beams.seqs, ctx)
        if attention is not None:
            beams.attention = (attention[:, None] if beams.attention is None
                               else torch.cat([beams.attention, attention[:, None]], 1))
        score, word, row, group = _candidates(logp, beams, ctx.get("search_required"), beam_size)
        room = beam_size - n_finished
        # once an image's captions that hold the word fill their beam, the others can no longer win
        room[0::2].masked_fill_(n_finished[1::2] >= beam_size, 0)
        keep = _best_per_beam(score, group, room)
        ends = (word[keep] == decoder.end_id) | (t == max_length - 1)
        if bool(ends.any()):
            done = keep[ends]
            _collect(finished, n_finished, beams, logp, (row[done], word[done], group[done]), decoder.end_id,
                     length_alpha)
            keep = keep[~ends]
        if not len(keep):
            break
        row, word = row[keep], word[keep]
        beams = _Beams(group[keep], score[keep], torch.cat([beams.seqs[row], word[:, None]], 1),
                       torch.cat([beams.logps[row], logp[row, word][:, None]], 1),
                       None if beams.attention is None else beams.attention[row], word)
        state = tuple(s[:, row] for s in state)
        # the context is the image's, whichever of its beams a row is: gather it again only
        # when the rows' images change (beams ended), not at every step
        if len(beams.group) != len(image) or bool((beams.group // 2 != image).any()):
            ctx, image = select(ctx, row), beams.group // 2
    # ties keep the order they finished in, as max() did; an image whose every continuation was
    # impossible (non-finite scores) gets no words
    return [sorted(finished[2 * b + 1] or finished[2 * b], key=lambda d: -d.score)
            or [Decoded([], [], float("-inf"))] for b in range(batch)]


def _collect(finished: list[list[Decoded]], n_finished: torch.Tensor, beams: _Beams, logp: torch.Tensor,
             ending: tuple[torch.Tensor, torch.Tensor, torch.Tensor], end_id: int, alpha: float) -> None:
    """Move the captions that end now (``ending``: their rows, last words and beams) into
    ``finished`` (fetched from the device in one go)."""
    rows, words, groups = ending
    ids_all = torch.cat([beams.seqs[rows], words[:, None]], 1).tolist()
    lps_all = torch.cat([beams.logps[rows], logp[rows, words][:, None]], 1).tolist()
    attn_all = beams.attention[rows].tolist() if beams.attention is not None else [None] * len(ids_all)
    for g, ids, lps, attn in zip(groups.tolist(), ids_all, lps_all, attn_all):
        finished[g].append(finish(ids, lps, end_id, alpha, attn))
    n_finished += torch.bincount(groups, minlength=len(n_finished))
