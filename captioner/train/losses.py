"""Caption training's losses: cross-entropy with teacher forcing, the attention penalty,
and self-critical training."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from captioner import search
from captioner.decoder import packed_order, packed_targets
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


class SelfCritical:
    """Self-critical sequence training: sample captions, reward each with its CIDEr-D
    against the image's references, and push up the log-probability of the captions that
    beat the mean of the other samples of the same image (Rennie et al. 2017; the
    mean-of-others baseline of Luo 2020). Runs without dropout, so that the captions
    sampled are those of the policy whose gradient is taken."""

    def __init__(self, model: Captioner, trainer, refs: list[list[list[str]]], features: torch.Tensor,
                 samples: int, max_words: int, grid: torch.Tensor | None = None):
        self.model, self.trainer, self.features, self.grid = model, trainer, features, grid
        self.samples, self.max_words = samples, max_words
        self.cider = CiderD(refs)
        self.refs = refs
        self._prepared: dict[int, list] = {}
        self.reward_sum, self.reward_count = 0.0, 0

    def rewards(self, images: list[int], ids: torch.Tensor, objects: list[list[str]]) -> torch.Tensor:
        out = []
        for k, seq in enumerate(ids.tolist()):
            image = images[k // self.samples]
            if image not in self._prepared:
                self._prepared[image] = self.cider.prepare_refs(self.refs[image])
            words = self.model.words_of(seq, objects[k // self.samples])
            out.append(self.cider.score(words, self._prepared[image]))
        return torch.tensor(out)

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        network, n = self.model.network, self.samples
        network.eval()  # no dropout: sample from and differentiate the same policy
        feats = self.features[images.to(self.features.device)].float()
        grid = None if self.grid is None else self.grid[images.to(self.grid.device)].float()
        with torch.no_grad():
            ctx, _ = network.context(PhotoInputs(feats, grid))
        ids, lengths = search.sample(network.decoder, ctx, n, self.max_words)
        lengths = lengths.cpu()
        objects = self.model.detected_object_words(feats)
        reward = self.rewards(images.tolist(), ids, objects).to(feats.device).view(-1, n)
        advantage = (reward - (reward.sum(1, keepdim=True) - reward) / (n - 1)).view(-1)
        logits, _ = self.trainer(PhotoInputs(feats.repeat_interleave(n, 0),
                                             None if grid is None else grid.repeat_interleave(n, 0)), ids, lengths)
        token_logp = -F.cross_entropy(logits, packed_targets(ids, lengths), reduction="none")
        owner, _ = packed_order(lengths - 1)  # each packed token's caption
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
