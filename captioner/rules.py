"""What no caption may be, by construction: a person where the detector sees none, a word
pair said twice, a modifier with no noun ("a little blonde haired is"), one object by two names.

The old person ban took "man" and "people" away when the concept classifiers doubted a
person, and the decoder said the same with the words left ("a group of young asian young
asian little blonde"). Here the rules are on the caption, not on a few words:

- **person words** (``person_words``): CHAIR's person synonyms (``data/coco_objects.txt``)
  and every word that describes a person: nationality, hair, age, gender, pronouns
  (``data/person_words.txt``). A caption may hold one only when the COCO detector finds a
  person (``DecodingConfig.person_score``).
- **no word pair twice** where one of the two is a content word ("young asian young asian";
  "on a ... on a" is fine), and no word twice in a row.
- **no dangling modifier**: a determiner ("a", "two", "the") followed only by modifiers
  (colours, sizes, ages, hair, "and") must reach a noun before a verb, a preposition or the
  end ("a little blonde haired is", "a black and white").
- **one object, one name**: an object the caption has named is not named again, by another of
  its category's words ("a kitchen with a television and a tv", "a couch and a sofa") or by
  the same word ("a bathroom with a microwave and microwave", "a keyboard mouse") unless
  right after "another" or "other" ("a dog chasing another dog"); people aside ("a man and a
  woman" are two).

The searches apply them while they search (``search.Bans``, through ``person_ban`` once per
caption and ``add_bans`` at each step: every continuation that would break one is not a
candidate, so the beam takes the next); the results check every finished caption again
(``problems``), and the evaluation reports count what got through (``degenerate``). When a
caption breaks one all the same (one cut at the longest length can), the captioner says less:
the detector's objects alone (``results.add_boxes``, with ``describe_objects`` and ``trimmed``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from captioner.wordlists import category_of_words, named_objects, person_words

DETERMINERS = frozenset("a an the two three four five six several many some few each another one".split())
# "of" opens a noun phrase too ("a group of different are": no noun), and an article may follow it
OPENERS = frozenset({"of"})
ARTICLES = frozenset({"a", "an", "the"})
SECOND_OF_A_KIND = frozenset({"another", "other"})  # "a dog chasing another dog": the same word, a second one
COLOURS = frozenset("white black brown red blue green yellow orange pink purple gray grey silver golden gold tan "
                    "dark light colorful colored bright striped spotted".split())
MODIFIERS = COLOURS | frozenset(
    "little small large big young old older elderly tall short long blonde blond haired bald asian african "
    "chinese japanese indian mexican caucasian hispanic teenage curly wet dirty fat skinny pretty cute and "
    "other very adult male female baby "
    # participles that describe ("an old fashioned is ..." has no noun either)
    "fashioned colored coloured dressed striped spotted stuffed covered shaped topped filled themed decorated "
    "painted crowded tiled lined sliced cooked grilled fried baked frosted "
    # adjectives a caption leans on when the noun is missing
    "different various huge giant tiny beautiful nice empty full open clean new modern busy lone single double "
    "wooden metal plastic wild young adult happy smiling asian african ethnic blond brunette redhead".split())
# words that may not follow a determiner and its modifiers (a noun must come first)
BREAKERS = frozenset(
    "is are was were be been sits sit sitting stands stand standing runs running walks walking plays playing "
    "looks looking holds holding rides riding lies lying lays laying jumps jumping wearing eating with in on at of "
    "to by near from for while that who which into onto through under over next behind down up out "
    "a an the".split())
NOT_PARTICIPLES = frozenset("flowerbed seabed riverbed hundred sled shed bed reed seed weed steed".split())


def is_modifier(word: str) -> bool:
    """A word that describes but cannot end a noun phrase: the list above, and participles
    ("parked", "covered": a word of five letters or more ending in -ed)."""
    return word in MODIFIERS or (len(word) >= 5 and word.endswith("ed") and word not in NOT_PARTICIPLES)


FUNCTION_WORDS = frozenset(
    "a an the of in on at with and to by near next from for into onto while is are its it their his her "
    "up down out over under behind front top side some two three".split())


def problems(words: Sequence[str], person_ok: bool = True) -> list[str]:
    """What is wrong with a caption (its words), in plain words; [] when nothing is."""
    found = []
    if not person_ok:
        named = sorted({w for w in words if w in person_words()})
        if named:
            found.append(f"names a person with no person detected ({', '.join(named)})")
    pairs: set[tuple[str, str]] = set()
    for a, b in zip(words, words[1:]):
        if a == b:
            found.append(f"repeats {a!r}")
        elif (a, b) in pairs and not (a in FUNCTION_WORDS and b in FUNCTION_WORDS):
            found.append(f"repeats {a + ' ' + b!r}")
        pairs.add((a, b))
    found += second_names(words)
    pending, after_of = 0, False
    for i, w in enumerate(list(words) + ["<end>"]):
        if pending and (w in BREAKERS or w == "<end>") and not (after_of and pending == 1 and w in ARTICLES):
            found.append(f"no noun after {' '.join(words[i - pending:i])!r}")
            pending = 0
        if w in DETERMINERS or w in OPENERS:
            pending, after_of = 1, w in OPENERS
        elif pending and is_modifier(w):
            pending += 1
        else:
            pending = 0
    return found


def second_names(words: Sequence[str]) -> list[str]:
    """An object named again, by another of its category's words ("a television and a tv") or
    by the same one ("a microwave and microwave"; "another dog" is a second dog), people
    aside (a man and a woman are two people, not one named twice)."""
    names: dict[str, str] = {}
    found = []
    for position, category in named_objects(list(words)):
        if category == "person":
            continue
        again = position > 0 and words[position - 1] in SECOND_OF_A_KIND and names.get(category) == words[position]
        if category in names and not again:
            found.append(f"names one {category} twice ({names[category]}, {words[position]})")
        names.setdefault(category, words[position])
    return found


def trimmed(words: Sequence[str], person_ok: bool = True) -> list[str]:
    """The longest beginning of a caption that breaks no rule and does not end on a function
    word ([] if none): what is left of a caption the search cut at its longest ("... is
    jumping over a" -> "... is jumping")."""
    for n in range(len(words), 0, -1):
        head = list(words[:n])
        if head[-1] not in FUNCTION_WORDS and not problems(head, person_ok):
            return head
    return []


def degenerate(words: Sequence[str]) -> bool:
    """A caption no user should read: a word pair repeated, a word twice in a row, a modifier
    without its noun (the person rule aside, which needs the photo)."""
    return bool(problems(words))


def as_written(seqs: torch.Tensor, slot_words: torch.Tensor | None, first_slot: int) -> torch.Tensor:
    """``seqs`` (rows, t) with each object slot (ids from ``first_slot``) replaced by the word
    it is written as (``slot_words``, rows by K; a slot with no word, -1, stays a slot)."""
    if slot_words is None:
        return seqs
    written = slot_words.gather(1, (seqs - first_slot).clamp(0, slot_words.shape[1] - 1))
    return torch.where((seqs >= first_slot) & (written >= 0), written, seqs)


def repeat_bans(ban: torch.Tensor, seqs: torch.Tensor, n: int, *, exempt: torch.Tensor | None = None,
                first_slot: int | None = None, slot_words: torch.Tensor | None = None) -> None:
    """Count into ``ban`` (rows, V) every next word that would repeat an n-gram the row's words
    ``seqs`` (rows, t) already hold: the word just written ("young young"), and the word that
    followed the last n - 1 words where they occur earlier ("a cup of coffee and a cup of" bans
    "coffee" with n = 3; "young asian young" bans "asian" with n = 2), unless every word of
    that n-gram is in ``exempt`` (V,) bool ("on a ... on a" is fine with function words exempt).
    ``first_slot``: ids from here on are object slots, none written twice ("a microwave and a
    microwave"); ``slot_words`` (rows, K): the word each slot (the last K ids) is written as, so
    that a slot written as a banned word is banned too.

    The one repeat ban: ``CaptionRules.add_bans`` uses it for its pairs (n = 2, function words
    exempt), ``search.Bans`` for ``DecodingConfig.block_ngram``. No loop over rows and no
    data-dependent shapes: the rows whose last n - 1 words occur earlier ban the word that
    followed them there."""
    t = seqs.shape[1]
    if n < 2 or t == 0:
        return
    last = seqs[:, -1:]
    ban.scatter_add_(1, last, torch.ones_like(last, dtype=ban.dtype))
    if first_slot is not None:
        ban.scatter_add_(1, seqs, (seqs >= first_slot).to(ban.dtype))
    windows = t - n + 1  # earlier places of the last n - 1 words (the latest overlaps them: its follower is ``last``)
    if windows < 1:
        return
    match = torch.ones(len(seqs), windows, dtype=torch.bool, device=seqs.device)
    for k in range(n - 1):
        match &= seqs[:, k:windows + k] == seqs[:, t - n + 1 + k:t - n + 2 + k]
    follow = seqs[:, n - 1:n - 1 + windows]
    if exempt is not None:
        every = exempt[follow]
        for k in range(n - 1):
            every = every & exempt[seqs[:, k:windows + k]]
        match &= ~every
    ban.scatter_add_(1, follow, match.to(ban.dtype))
    if slot_words is not None:  # (rows, windows, K): the slots written as a banned follower
        hits = (slot_words[:, None, :] == follow[:, :, None]) & match[:, :, None]
        ban[:, ban.shape[1] - slot_words.shape[1]:] += hits.any(1).to(ban.dtype)


class CaptionRules:
    """The rules over a vocabulary, as masks that ``search`` applies to every step's
    log-probabilities. ``slot_words``: at inference, what each object slot will be
    written as is the photo's, so slots count as nouns."""

    def __init__(self, words: Sequence[str], end_id: int):
        def mask(table) -> torch.Tensor:
            return torch.tensor([w in table for w in words])

        self.person = mask(person_words())
        self.determiner = mask(DETERMINERS | OPENERS)
        self.modifier = torch.tensor([is_modifier(w) for w in words])
        self.opener, self.article = mask(OPENERS), mask(ARTICLES)
        self.breaker = mask(BREAKERS)
        self.breaker[end_id] = True
        self.function = mask(FUNCTION_WORDS)
        self.second_of_a_kind = mask(SECOND_OF_A_KIND).float()
        self.end_id = end_id
        # the COCO object each word names, people aside (80: none): one object, one name
        category = category_of_words(words)
        self.category = torch.where((category < 0) | (category == 0), 80, category)

        # what a pending determiner bans next (``_ban_dangling``), by kind: 0 nothing, 1 a breaker,
        # 2 a breaker but an article (right after "of"), 3 a breaker or a modifier (three modifiers already)
        self.dangling = torch.stack([torch.zeros_like(self.breaker), self.breaker, self.breaker & ~self.article,
                                     self.breaker | self.modifier]).float()
        self.positions = torch.arange(64)

    def to(self, device: torch.device) -> CaptionRules:
        for name in ("person", "determiner", "modifier", "breaker", "function", "opener", "article", "dangling",
                     "positions", "category", "second_of_a_kind"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def mask(self, logp: torch.Tensor, seqs: torch.Tensor, person_ok: torch.Tensor | None,
             slot_words: torch.Tensor | None = None) -> torch.Tensor:
        """``logp`` (rows, V) with -inf for every next word that would break a rule, given the
        rows' words so far ``seqs`` (rows, t) and whether each row's photo has a person.
        ``slot_words`` (rows, K): the word id each object slot (the vocabulary's last K
        tokens) is written as for the row's photo (-1: a word the vocabulary lacks), so that
        "a <obj1> player in a baseball uniform" counts as "a baseball" twice. The rules in one
        call, for tests and one-off checks: the searches use ``search.Bans``, which calls
        ``person_ban`` once per caption and ``add_bans`` at each step."""
        if self.person.device != logp.device:
            self.to(logp.device)
        ban = torch.zeros_like(logp)
        if person_ok is not None:
            ban += self.person_ban(person_ok, slot_words, logp.shape[1])
        self.add_bans(ban, seqs, slot_words)
        return logp.masked_fill(ban > 0, float("-inf"))

    def person_ban(self, person_ok: torch.Tensor, slot_words: torch.Tensor | None, vocab: int) -> torch.Tensor:
        """(images, V) 1.0 for each word (and slot) naming or describing a person, in the rows
        of photos where the detector finds none (``person_ok`` False); fixed for a caption."""
        if self.person.device != person_ok.device:
            self.to(person_ok.device)
        ban = (~person_ok[:, None] & self.person[None, :]).float()
        if slot_words is not None:  # a slot is its word: a person word like the word itself
            first_slot = vocab - slot_words.shape[1]
            ban[:, first_slot:] += (self._slot_is(self.person, slot_words) & ~person_ok[:, None]).float()
        return ban

    def add_bans(self, ban: torch.Tensor, seqs: torch.Tensor, slot_words: torch.Tensor | None = None) -> None:
        """Count into ``ban`` (rows, V) every next word that would leave a modifier without its
        noun or repeat a word pair, given the rows' words so far ``seqs`` (rows, t).

        Written without data-dependent shapes (every banned word is counted into one table by
        ``scatter_add``): a step costs a handful of small kernels and never waits."""
        if not seqs.shape[1]:
            return
        if self.person.device != ban.device:
            self.to(ban.device)
        first_slot = ban.shape[1] - (0 if slot_words is None else slot_words.shape[1])
        seqs = as_written(seqs, slot_words, first_slot)
        self._ban_dangling(ban, seqs)
        repeat_bans(ban, seqs, 2, exempt=self.function, slot_words=slot_words)  # no pair twice, no word twice
        self._ban_second_names(ban, seqs, slot_words, first_slot)

    def _ban_dangling(self, ban: torch.Tensor, seqs: torch.Tensor) -> None:
        """A determiner followed only by modifiers so far ("a little blonde"): a breaker (or the
        end) may not come next, nor a modifier already in the run, nor a fourth modifier."""
        t = seqs.shape[1]
        if len(self.positions) < t:
            self.positions = torch.arange(2 * t, device=seqs.device)
        position = self.positions[:t]
        last_other = torch.where(self.modifier[seqs], -1, position).amax(1)  # the last word that is no modifier
        anchor = seqs.gather(1, last_other.clamp_min(0)[:, None]).squeeze(1)
        pending = (last_other >= 0) & self.determiner[anchor]
        run = (t - 1) - last_other  # modifiers since the determiner
        after_of = (run == 0) & self.opener[anchor]  # "of a", "of the": fine
        kind = pending * (1 + after_of.long() + 2 * (run >= 3).long())
        ban += self.dangling[kind]
        ban.scatter_add_(1, seqs, ((position[None, :] > last_other[:, None]) & pending[:, None]).float())

    def _ban_second_names(self, ban: torch.Tensor, seqs: torch.Tensor, slot_words: torch.Tensor | None,
                          first_slot: int) -> None:
        """Any name of an object the caption has named already ("a television and a tv", "a
        couch next to a sofa", "a microwave and microwave"; people aside; the same word right
        after "another": "a dog chasing another dog"), and the slots written as one."""
        named = torch.zeros(len(seqs), 81, device=seqs.device).scatter_(1, self.category[seqs], 1.0)
        named[:, 80] = 0.0
        used = torch.zeros_like(ban).scatter_(1, seqs, 1.0)
        second = named[:, self.category] * (1.0 - used * self.second_of_a_kind[seqs[:, -1]][:, None])
        ban += second
        if slot_words is not None:
            ban[:, first_slot:] += second.gather(1, slot_words.clamp_min(0)) * (slot_words >= 0)

    def _slot_is(self, table: torch.Tensor, slot_words: torch.Tensor) -> torch.Tensor:
        """(rows, K): whether each slot's word is in ``table`` (a (V,) bool mask)."""
        return table[slot_words.clamp_min(0)] & (slot_words >= 0)


# ------------------------------------------------------------------ saying less

# how a category reads in a caption, and its plural, where the category's name is not it
_SPOKEN = {"dining table": "table", "sports ball": "ball", "tv": "television", "hair drier": "hair dryer",
           "cell phone": "phone", "potted plant": "potted plant", "person": "person", "skis": "pair of skis"}
_PLURAL = {"person": "people", "sheep": "sheep", "mouse": "mice", "knife": "knives", "pair of skis": "pairs of skis",
           "scissors": "scissors", "skis": "skis"}
_NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def _phrase(category: str, n: int) -> str:
    word = _SPOKEN.get(category, category)
    if n <= 1:
        return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"
    plural = _PLURAL.get(word) or (word + "es" if word.endswith(("s", "sh", "ch", "x")) else word + "s")
    return f"{_NUMBERS.get(n, 'many')} {plural}" if n <= 6 else f"many {plural}"


def describe_objects(counts: dict[str, int], person_ok: bool = True, most: int = 3) -> list[str]:
    """A caption of the detector's objects alone ("two dogs and a frisbee"), the most
    numerous first: what the captioner says when no sentence it wrote keeps the rules.
    [] when the detector found nothing it may name."""
    parts: list[str] = []
    for c, n in sorted(counts.items(), key=lambda cn: -cn[1]):
        if (person_ok or c != "person") and len(parts) < most:
            tried = parts + [_phrase(c, n)]
            if not problems(" and ".join(tried).split()):  # "a baseball glove and a baseball bat": one of them
                parts = tried
    if not parts:
        return []
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text.split()
