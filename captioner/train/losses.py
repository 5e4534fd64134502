"""Caption training's losses: cross-entropy with teacher forcing, the attention penalty,
and self-critical training."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from captioner import search
from captioner.claims import parse
from captioner.decoder import packed_order, packed_targets
from captioner.decoding import policy
from captioner.inputs import PhotoInputs
from captioner.model import Captioner
from captioner.train.attention_targets import attention_loss
from captioner.train.cider import CiderD


def caption_loss(trainer, inputs: PhotoInputs, caps: torch.Tensor, lengths: torch.Tensor, *,
                 label_smoothing: float = 0.0, attention_reg: float = 0.0, targets: torch.Tensor | None = None,
                 ground_weight: float = 0.0):
    """Cross-entropy of the teacher-forced words, plus (attention) the doubly stochastic
    penalty that asks every grid cell to be looked at about once over the caption (photo
    rows only: a text row has no grid to look at), plus ``ground_weight`` times the
    attention supervision loss towards ``targets`` (``attention_targets``: the boxes of the
    objects the words name). ``trainer``: the caption network, or its
    DistributedDataParallel wrapper."""
    logits, weights = trainer(inputs, caps, lengths)
    loss = F.cross_entropy(logits, packed_targets(caps, lengths), label_smoothing=label_smoothing)
    cells = None if inputs.grid is None else inputs.grid.shape[1]
    objects_only = inputs.objects_only
    if weights is not None and ground_weight and targets is not None:
        if objects_only is not None:  # a row learned without its photo has nothing to look at
            targets = targets & ~objects_only[:, None, None]
        loss = loss + ground_weight * attention_loss(weights, targets, cells)
    if weights is not None and attention_reg:
        penalty = (1.0 - weights[..., :cells].sum(1)) ** 2  # the cells (a photo's boxes differ in number)
        if objects_only is not None:
            penalty = penalty[~objects_only]
        if len(penalty):
            loss = loss + attention_reg * penalty.mean()
    return loss


END = "</s>"  # the end of a sentence, as a word of the reward: a caption cut short misses every n-gram ending in it


def sampled_logits(logits: torch.Tensor, drawn: search.Samples, lengths: torch.Tensor,
                   word_bias: torch.Tensor | None, every: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """The teacher-forced ``logits`` (packed) of sampled captions as the distribution they
    were drawn from: plus the photo's ``word_bias`` (grounding), the words each step could
    not write at -inf. The policy gradient must be that distribution's: taken on the bare
    network, every caption with a negative advantage pushes up the banned words (they are
    never drawn to be pushed down again) until the network puts its mass on them and the
    captions drawn around them are ones it finds all but impossible."""
    banned = pack_padded_sequence(drawn.banned, (lengths - 1).cpu(), batch_first=True, enforce_sorted=False).data
    if word_bias is not None:
        logits = logits + word_bias.nan_to_num(neginf=0.0)[every.to(word_bias.device)[owner.to(word_bias.device)]]
    return logits.masked_fill(banned.to(logits.device), float("-inf"))


class SentenceReward:
    """CIDEr-D of a caption against its photo's references with the end of the sentence
    counted as a word (``END``, appended to every reference and to each caption that
    ended), so that a caption cut short, or one that trails off into "in a a", loses the
    n-grams that end a sentence. ``refs``: each photo's tokenised references (repeats
    dropped: a photo repeated in the training data keeps its five).

    Document frequencies: by default from all the training photos' references together.
    With ``corpora`` (family -> more photos' tokenised captions, e.g. COCO's captions of
    photos that are not here), each photo is scored with its own family's frequencies
    (``families``: each photo's, e.g. "coco" or "flickr"): its family's training
    references plus that family's corpus, the way its benchmark weighs words; a family
    without a corpus keeps the frequencies of all the training photos. Over a few thousand
    mixed photos a generic word ("food") costs about as much as the specific one
    ("broccoli"); over COCO's 33,000 it costs far more."""

    def __init__(self, refs: list[list[list[str]]], families: list[str] | None = None,
                 corpora: dict[str, list[list[list[str]]]] | None = None, unsupported: float = 0.0):
        self.refs = [ended(caps) for caps in refs]
        self.unsupported = unsupported  # taken off for each action no reference of the photo states
        self._actions: dict[int, set[str]] = {}
        corpora, families = corpora or {}, families or [""] * len(self.refs)
        by_family = {f: CiderD([r for r, g in zip(self.refs, families) if g == f] + [ended(c) for c in corpora[f]])
                     for f in dict.fromkeys(families) if f in corpora}
        if any(f not in by_family for f in families):  # counted only when some photo needs the pooled weights
            pooled = CiderD(self.refs)
            by_family.update({f: pooled for f in families if f not in by_family})
        self.scorers = [by_family[f] for f in families]
        self._prepared: dict[int, list] = {}

    def __call__(self, image: int, words: list[str], ended: bool) -> float:
        scorer = self.scorers[image]
        if image not in self._prepared:
            self._prepared[image] = scorer.prepare_refs(self.refs[image])
        score = scorer.score(list(words) + [END] if ended else list(words), self._prepared[image])
        if self.unsupported:
            score -= self.unsupported * len(self.unsupported_actions(image, words))
        return score

    def unsupported_actions(self, image: int, words: Sequence[str]) -> list[str]:
        """The caption's actions ("sitting", "riding") that none of the photo's references
        states in any form ("sits", "sat" aside: ``action_stem``): what the photo's people
        did not see done. "a man is sitting on a plate" of a man frying a sandwich: ["sitting"]."""
        if image not in self._actions:
            self._actions[image] = {action_stem(r[i]) for r in self.refs[image] for i in parse(r).actions}
        said = self._actions[image]
        return [words[i] for i in parse(words).actions if action_stem(words[i]) not in said]


def action_stem(verb: str) -> str:
    """A verb's crude stem, so that a caption's "riding" meets a reference's "rides" and
    "running" meets "runs": "ing", "es" or "s" off, a doubled last consonant single."""
    if verb.endswith("ies") and len(verb) > 4:
        return verb[:-3] + "y"  # "flies": "fly"
    for ending in ("ing", "es", "s", "e"):
        if verb.endswith(ending) and len(verb) - len(ending) >= 3:
            verb = verb[:-len(ending)]
            break
    if len(verb) >= 4 and verb[-1] == verb[-2] and verb[-1] not in "aeiou":
        verb = verb[:-1]
    return verb


def ended(captions: list[list[str]]) -> list[list[str]]:
    """A photo's tokenised captions, repeats dropped, each with the end of the sentence."""
    return [list(r) + [END] for r in dict.fromkeys(map(tuple, captions))]


class SelfCritical:
    """Self-critical sequence training (Rennie et al. 2017) of the whole captioner: sample
    ``samples`` captions of each photo under the decoding policy the app uses
    (``decoding.policy``: grounding, backing and the caption rules, so that what is
    rewarded is what decoding could write), reward each with its CIDEr-D against the
    photo's references with the end of the sentence counted as a word (a caption cut
    short, or one that trails off into "in a a", scores low), and push up the
    log-probability of the captions that beat the mean of the other samples of the same
    photo (the baseline of Luo 2020). Runs without dropout, so that the captions sampled
    are those of the policy whose gradient is taken.

    ``refs``: each training photo's tokenised references; ``inputs_of(images)``: the
    ``PhotoInputs`` of those training photos, as cross-entropy training gives them;
    ``reward``: the ``SentenceReward`` (default: over ``refs`` alone)."""

    def __init__(self, model: Captioner, trainer, refs: list[list[list[str]]],
                 inputs_of: Callable[[torch.Tensor], PhotoInputs], samples: int, max_words: int,
                 reward: SentenceReward | None = None):
        if samples < 2:
            raise ValueError("self-critical training needs at least 2 samples per photo (the baseline is the others)")
        self.model, self.trainer, self.inputs_of = model, trainer, inputs_of
        self.samples, self.max_words = samples, max_words
        self.reward = reward or SentenceReward(refs)
        self.reward_sum, self.reward_count = 0.0, 0

    def rewards(self, images: list[int], ids: torch.Tensor, objects: list[list[str]]) -> torch.Tensor:
        end = self.model.vocab.end_id
        out = []
        for k, seq in enumerate(ids.tolist()):
            image = k // self.samples
            out.append(self.reward(images[image], self.model.words_of(seq, objects[image]), end in seq))
        return torch.tensor(out)

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        network, n, model = self.model.network, self.samples, self.model
        network.eval()  # no dropout: sample from and differentiate the same policy
        inputs = self.inputs_of(images)
        decoding = model.decoding
        with torch.no_grad():
            fixed = policy(network, model.tables, inputs, decoding)
            drawn = search.sample(network.decoder, fixed.ctx, n, min(self.max_words, decoding.max_length),
                                  block_ngram=decoding.block_ngram, constraints=fixed.constraints)
        ids, lengths = drawn.ids, drawn.lengths.cpu()
        objects = ([[model.object_words[w] for w in row] for row in fixed.classified.words.tolist()]
                   if fixed.classified is not None else [[] for _ in range(len(images))])
        reward = self.rewards(images.tolist(), ids, objects).to(inputs.features.device).view(-1, n)
        advantage = (reward - (reward.sum(1, keepdim=True) - reward) / (n - 1)).view(-1)
        every = torch.arange(len(images)).repeat_interleave(n)
        logits, _ = self.trainer(inputs.rows(every), ids, lengths)
        owner, _ = packed_order(lengths - 1)  # each packed token's caption
        token_logp = -F.cross_entropy(sampled_logits(logits, drawn, lengths, fixed.ctx.get("word_bias"), every, owner),
                                      packed_targets(ids, lengths), reduction="none")
        seq_logp = torch.zeros(len(ids), device=token_logp.device).index_add(0, owner.to(token_logp.device),
                                                                              token_logp)
        self.reward_sum += float(reward.sum())
        self.reward_count += reward.numel()
        return -(advantage * seq_logp).mean()

    def mean_reward(self) -> float:
        """The mean CIDEr-D reward of the captions sampled since the last call."""
        mean = self.reward_sum / max(1, self.reward_count)
        self.reward_sum, self.reward_count = 0.0, 0
        return mean
