"""The decoder: teacher forcing on packed sequences, greedy and beam search."""

import torch

from captioner import search
from captioner.decoder import ShowTellDecoder, packed_targets
from captioner.decoding import DecodingConfig
from captioner.inputs import PhotoInputs
from captioner.model import Captioner
from captioner.network import CaptionerConfig
from captioner.vocabulary import Vocabulary

WORDS = "a dog cat runs sits on the grass beach red ball man woman plays with".split()


def random_captioner(seed=0, vocab_words=WORDS, **overrides):
    torch.manual_seed(seed)
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *vocab_words])
    config = CaptionerConfig(feature_dim=32, vocab_size=len(vocab), embed_dim=16, hidden_dim=24,
                             dropout=0.0, **overrides)
    model = Captioner(config, vocab, decoding=DecodingConfig(max_length=12)).eval()
    with torch.no_grad():  # sharper distributions than a fresh init, so captions end
        model.network.decoder.out.weight.mul_(8)
        model.network.decoder.out.bias[vocab.end_id] += 1.0
    return model


def test_teacher_forcing_logits_follow_packed_targets():
    dec = ShowTellDecoder(vocab_size=10, embed_dim=8, hidden_dim=8, dropout=0.0)
    caps = torch.tensor([[1, 4, 5, 6, 2], [1, 7, 2, 0, 0]])
    lengths = torch.tensor([5, 3])
    logits, attention = dec(caps, lengths, {"image": torch.randn(2, 8)})
    targets = packed_targets(caps, lengths)
    assert attention is None
    assert logits.shape == (4 + 2, 10)
    # packed, time-major: step 0 of both, step 1 of both, then the longer one alone
    assert targets.tolist() == [4, 7, 5, 2, 6, 2]


def test_teacher_forcing_matches_step_by_step_decoding():
    dec = ShowTellDecoder(vocab_size=10, embed_dim=8, hidden_dim=8, dropout=0.0).eval()
    ctx = {"image": torch.randn(1, 8)}
    caps = torch.tensor([[1, 4, 5, 2]])
    logits, _ = dec(caps, torch.tensor([4]), ctx)
    logits[:, [0, 1, 3]] = float("-inf")  # inference never emits <pad>, <start> or <unk>
    logits = logits.log_softmax(-1)
    ctx = dec.prepare(ctx)  # what every search does first: the per-caption tables
    state = dec.init_state(ctx)
    for t in range(3):
        logp, state, _ = dec.step(caps[:, t], state, ctx)
        torch.testing.assert_close(logp[0], logits[t], atol=1e-6, rtol=1e-6)


def test_beam_width_one_is_exactly_greedy():
    model = random_captioner()
    features = torch.randn(16, 32)
    greedy = model.caption_features(features, beam_size=1)
    ctx, _ = model.network.context(PhotoInputs(features))
    beam1 = [model.writer.result(d, [], None, None) for d in search.beam_search(model.network.decoder, ctx, 1, 12)]
    assert [g.words for g in greedy] == [b.words for b in beam1]
    for g, b in zip(greedy, beam1):
        assert g.probabilities == b.probabilities
    assert any(len(g.words) < 12 for g in greedy) and len({g.caption for g in greedy}) > 1


def test_batched_equals_one_by_one():
    model = random_captioner(seed=1)
    features = torch.randn(8, 32)
    for beam in (1, 3):
        batched = model.caption_features(features, beam_size=beam)
        single = [model.caption_features(features[i:i + 1], beam_size=beam)[0] for i in range(8)]
        assert [r.words for r in batched] == [r.words for r in single]
        for a, b in zip(batched, single):
            torch.testing.assert_close(torch.tensor(a.probabilities), torch.tensor(b.probabilities))


@torch.no_grad()
def brute_force_best(model, feature, max_length, alpha, must_include=None):
    """Exhaustive search over all captions up to max_length words (tiny vocabulary),
    optionally among those that contain the token ``must_include``."""
    dec = model.network.decoder
    best = (float("-inf"), None)
    ctx = dec.prepare(model.network.context(PhotoInputs(feature[None]))[0])
    frontier = [([], 0.0, dec.init_state(ctx))]
    for t in range(max_length):
        new = []
        for ids, total, state in frontier:
            logp, st, _ = dec.step(torch.tensor([ids[-1] if ids else dec.start_id]), state, ctx)
            for w in range(logp.shape[1]):
                s = total + float(logp[0, w])
                if w == dec.end_id or t == max_length - 1:
                    caption = ids + ([] if w == dec.end_id else [w])
                    if must_include is None or must_include in caption:
                        best = max(best, (s / (len(ids) + 1) ** alpha, caption), key=lambda x: x[0])
                else:
                    new.append((ids + [w], s, st))
        frontier = new
    return best


def test_wide_beam_finds_the_exhaustive_best_and_beats_greedy_on_average():
    model = random_captioner(seed=2, vocab_words=["a", "b", "c"])
    features = torch.randn(6, 32)
    ctx, _ = model.network.context(PhotoInputs(features))
    wide = search.beam_search(model.network.decoder, ctx, beam_size=200, max_length=4)
    greedy = search.greedy(model.network.decoder, ctx, max_length=4)
    for i in range(6):
        score, ids = brute_force_best(model, features[i], 4, 1.0)
        assert wide[i].ids == ids
        assert abs(wide[i].score - score) < 1e-5
        assert wide[i].score >= greedy[i].score - 1e-6


def test_constrained_beam_search_finds_the_best_caption_that_holds_the_required_word():
    model = random_captioner(seed=5, vocab_words=["a", "b", "c"])
    features = torch.randn(6, 32)
    ctx, _ = model.network.context(PhotoInputs(features))
    c = model.vocab.index["c"]
    required = torch.tensor([c, -1, c, c, -1, c])
    wide = search.beam_search(model.network.decoder, ctx, beam_size=200, max_length=4, must_include=required)
    for i in range(6):
        score, ids = brute_force_best(model, features[i], 4, 1.0, must_include=c if required[i] >= 0 else None)
        assert wide[i].ids == ids
        assert abs(wide[i].score - score) < 1e-5
        if required[i] >= 0:
            assert c in wide[i].ids
    free = search.beam_search(model.network.decoder, ctx, beam_size=3, max_length=4)
    narrow = search.beam_search(model.network.decoder, ctx, beam_size=3, max_length=4, must_include=required)
    assert all(c in narrow[i].ids for i in (0, 2, 3, 5))
    assert [narrow[i].ids for i in (1, 4)] == [free[i].ids for i in (1, 4)]  # no constraint, no change


def test_results_carry_words_and_their_probabilities():
    model = random_captioner(seed=3)
    for beam in (1, 4):
        for r in model.caption_features(torch.randn(5, 32), beam_size=beam):
            assert r.caption == " ".join(r.words)
            assert len(r.probabilities) == len(r.words)
            assert all(0.0 < p <= 1.0 for p in r.probabilities)
            assert not {"<start>", "<end>", "<pad>", "<unk>"} & set(r.words)


def test_greedy_stops_as_soon_as_every_caption_has_ended():
    model = random_captioner(seed=4)
    dec = model.network.decoder
    calls = []
    original = dec.step
    dec.step = lambda *a: calls.append(1) or original(*a)
    results = model.caption_features(torch.randn(4, 32), beam_size=1, max_length=50)
    longest = max(len(r.words) for r in results)
    assert longest < 50
    assert len(calls) == longest + 1  # the last step emitted the final <end>


def test_teacher_forcing_keeps_each_image_with_its_caption():
    """Packing sorts by length; the image state must follow its caption."""
    dec = ShowTellDecoder(vocab_size=10, embed_dim=8, hidden_dim=8, dropout=0.0).eval()
    images = torch.randn(3, 8)
    caps = torch.tensor([[1, 4, 2, 0, 0], [1, 5, 6, 7, 2], [1, 8, 9, 2, 0]])
    lengths = torch.tensor([3, 5, 4])
    batched, _ = dec(caps, lengths, {"image": images})
    order = torch.sort(lengths, descending=True, stable=True).indices
    single = {int(i): dec(caps[i:i + 1, : lengths[i]], lengths[i:i + 1], {"image": images[i:i + 1]})[0]
              for i in order}
    # packed rows, time-major over the length-sorted batch
    rows = [single[int(i)][t] for t in range(4) for i in order if t < lengths[i] - 1]
    torch.testing.assert_close(batched, torch.stack(rows), atol=1e-6, rtol=1e-6)


def test_lean_inference_step_is_the_lstm_step():
    torch.manual_seed(0)
    dec = ShowTellDecoder(vocab_size=30, embed_dim=12, hidden_dim=16, num_layers=2, dropout=0.0).eval()
    ctx, tokens = dec.prepare({"image": torch.randn(5, 12)}), torch.randint(4, 30, (5,))
    dec.train()  # the training path runs nn.LSTM itself
    state_ref = dec.init_state(ctx)
    dec.eval()
    dec.fused_step = True  # torch's oneDNN kernel
    logp_ref, (h_ref, c_ref), _ = dec.step(tokens, state_ref, ctx)
    dec.fused_step = False  # two matrix products
    state = dec.init_state(ctx)
    torch.testing.assert_close(state[0], state_ref[0], atol=1e-6, rtol=0)
    logp, (h, c), _ = dec.step(tokens, state, ctx)
    for a, b in ((logp, logp_ref), (h, h_ref), (c, c_ref)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_the_int8_step_reads_stacked_matrices_and_writes_the_same_captions_as_separate_ones():
    """``use_int8`` stacks the products that read the same input (the output layer with the
    slots' query; the attention's query, its gate and the LSTM's hidden map): each output
    row has its own int8 scale, so every number is the one separate products give."""
    import copy
    import warnings

    from torch import nn
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from captioner.network import CaptionNetwork
    from captioner.objects import ClassifiedObjects

    torch.manual_seed(3)
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *WORDS, "<obj1>", "<obj2>"])
    config = CaptionerConfig(feature_dim=32, vocab_size=len(vocab), embed_dim=16, hidden_dim=24, dropout=0.0,
                             decoder="attention", grid_dim=16, attention_dim=16, object_slots=2, object_words=4)
    net = CaptionNetwork(config, vocab).eval()
    features, grid = torch.randn(5, 32), torch.randn(5, 9, 32)
    classified = ClassifiedObjects(torch.randint(0, 4, (5, 2)), torch.rand(5, 2))
    ctx, _ = net.context(PhotoInputs(features, grid, classified=classified))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        separate = quantize_dynamic(copy.deepcopy(net.decoder), {nn.Linear: per_channel_dynamic_qconfig},
                                    dtype=torch.qint8)
    net.use_int8()
    stacked = net.inference_decoder
    assert hasattr(stacked, "output_maps") and hasattr(stacked, "hidden_maps") and not hasattr(separate, "hidden_maps")
    tokens = torch.tensor([1, 5, 7, len(vocab) - 1, len(vocab) - 2])  # words and both slots
    for dec in (separate, stacked):
        prepared = dec.prepare(ctx)
        state = dec.init_state(prepared)
        dec.outputs = [dec.step(tokens, state, prepared)]
        dec.outputs.append(dec.step(dec.outputs[0][0].argmax(1), dec.outputs[0][1], prepared))
    for (a_logp, a_state, a_w), (b_logp, b_state, b_w) in zip(separate.outputs, stacked.outputs):
        torch.testing.assert_close(a_logp, b_logp, atol=1e-5, rtol=0)
        torch.testing.assert_close(a_state[0], b_state[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(a_w, b_w, atol=1e-6, rtol=0)
