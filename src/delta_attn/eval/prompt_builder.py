"""Token-level prompt assembly: a prompt built from separately tokenised pieces and fitted to an exact token count."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..prompts import chat_frame
from . import corpus


class PromptBuilder:
    """Tokenises pieces (cached) and wraps task text in the model's chat template."""

    def __init__(
        self,
        tokenizer,
        *,
        chat: bool = True,
        texts_dir: str | Path | None = None,
        essay_books: Sequence[str] = corpus.ESSAY_BOOKS,
    ) -> None:
        self.tok = tokenizer
        self.chat = chat
        self.texts_dir = corpus.resolve_texts_dir(texts_dir)
        self.essay_books = tuple(essay_books)
        self._cache: dict[str, list[int]] = {}
        self.frame = chat_frame(tokenizer, chat=chat)
        self._essay: tuple[list[str], list[list[int]]] | None = None

    def enc(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS), cached for short strings."""
        if len(text) > 200:
            return self.tok.encode(text, add_special_tokens=False)
        ids = self._cache.get(text)
        if ids is None:
            ids = self._cache[text] = self.tok.encode(text, add_special_tokens=False)
        return ids

    def enc_many(self, texts: Sequence[str]) -> list[list[int]]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            for t, ids in zip(missing, self.tok(missing, add_special_tokens=False)["input_ids"]):
                self._cache[t] = ids
        return [self._cache[t] for t in texts]

    def wrap(self, user_head: str, user_tail: str, answer_prefix: str) -> tuple[list[int], list[int]]:
        """(head ids, tail ids) around the context: chat header + task text, then question + answer prefix."""
        # after the assistant header's newline a leading space would be a token of its own (see the module doc)
        prefix = answer_prefix.strip() if self.frame.head else answer_prefix.rstrip()
        head, tail = self.frame.around(user_head, user_tail, prefix)
        return self.tok.encode(head, add_special_tokens=False), self.tok.encode(tail, add_special_tokens=False)

    def essay(self) -> tuple[list[str], list[list[int]]]:
        """Sentences of the essay books and their ids with a leading space (tokenised once)."""
        if self._essay is None:
            sents = list(corpus.sentences(self.essay_books, self.texts_dir))
            ids = self.tok([" " + s for s in sents], add_special_tokens=False)["input_ids"]
            self._essay = (sents, ids)
        return self._essay


def fit_to_budget(
    budget: int, build: Callable[[int], list[int]], extra: Callable[[int, int], list[int]], start: int = 8
):
    """Largest n with ``len(build(n)) <= budget``, then ``extra(n, d)`` fills the last d tokens exactly."""
    if len(build(0)) > budget:
        raise ValueError(
            f"the prompt needs at least {len(build(0)) - budget} more tokens than the target allows "
            "(instruction, examples and question do not fit): use a longer length"
        )
    lo, hi = 0, max(1, start)
    while len(build(hi)) <= budget:  # gallop
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if len(build(mid)) <= budget:
            lo = mid
        else:
            hi = mid
    ids = build(lo)
    d = budget - len(ids)
    fill = extra(lo, d) if d else []
    assert len(fill) == d, (len(fill), d)
    return lo, ids + fill


def take_tokens(pieces: Iterator[list[int]], d: int) -> list[int]:
    """The first d ids of the concatenated pieces."""
    out: list[int] = []
    while len(out) < d:
        out.extend(next(pieces))
    return out[:d]


Unit = tuple  # (text, ids of sep + text)


def layout_pieces(
    builder: "PromptBuilder",
    units: Sequence[Unit],
    specials: Sequence[Unit],
    depths: Sequence[int],
    first_sep: str | None = None,
) -> tuple[list[int], list[int]]:
    """Haystack units with special units (needles, chain links, gold documents) inserted at depths.

    A special at depth p (percent) goes to the unit boundary nearest to p% of the haystack's tokens
    (RULER counts depth in sentences; tokens make the recorded depth exact to within one unit);
    specials at one boundary keep the order of their depths. The very first element is re-tokenised
    with ``first_sep`` when given (e.g. ``"\\n"`` after the instruction line while units are joined by
    spaces). Returns the flat ids, the token offset of each special (in the order given) and the
    offset just past it.
    """
    cum = [0]
    for u in units:
        cum.append(cum[-1] + len(u[1]))
    order = sorted(range(len(specials)), key=lambda i: (depths[i], i))
    slots: dict[int, list[int]] = {}
    for i in order:
        want = cum[-1] * depths[i] / 100
        slot = min(range(len(cum)), key=lambda j: (abs(cum[j] - want), j))
        slots.setdefault(slot, []).append(i)
    flat: list[int] = []
    offsets = [0] * len(specials)
    ends = [0] * len(specials)

    def put(unit: Unit) -> None:
        flat.extend(builder.enc(first_sep + unit[0]) if (first_sep is not None and not flat) else unit[1])

    for pos in range(len(units) + 1):
        for i in slots.get(pos, []):
            offsets[i] = len(flat)
            put(specials[i])
            ends[i] = len(flat)
        if pos < len(units):
            put(units[pos])
    return flat, offsets, ends


class PieceStream:
    """A lazily materialised endless sequence of units, indexable by position."""

    def __init__(self, it: Iterator[Unit]) -> None:
        self._it = it
        self._items: list[Unit] = []

    def __getitem__(self, sl: slice) -> list[Unit]:
        while len(self._items) < sl.stop:
            self._items.append(next(self._it))
        return self._items[sl]

    def ids_from(self, start: int) -> Iterator[list[int]]:
        i = start
        while True:
            yield self[i : i + 1][0][1]
            i += 1
