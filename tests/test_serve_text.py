"""The reply text of ``delta-attn serve`` (serve.text.ReplyText): incremental decoding and stop strings.

A byte tokenizer (one token per UTF-8 byte: characters split across tokens, like byte-level BPE) makes
the stop-string rules checkable against plain string slicing; the real SmolLM2 tokenizer checks that
decoding token by token gives what decoding the whole reply gives.
"""

from __future__ import annotations

import random

import pytest

from delta_attn.serve.text import ReplyText

ALPHABET = "ab \n.éü€😀"  # 1- to 4-byte characters


class ByteTokenizer:
    """Token = one UTF-8 byte; an incomplete character decodes to U+FFFD, as with byte-level BPE."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def _feed(reply: ReplyText, ids) -> list[str]:
    """Every piece push() and finish() release, the released text checked to only grow."""
    pieces = []
    for token in ids:
        pieces.append(reply.push(token))
        if reply.stopped:
            break
    pieces.append(reply.finish())
    return pieces


def _expected(text: str, stops: list[str]) -> tuple[str, bool]:
    """The reply ends as soon as a stop string is complete, before the earliest stop string in it by then."""
    for end in range(len(text) + 1):
        hits = [text.find(s, 0, end) for s in stops if s in text[:end]]
        if hits:
            return text[: min(hits)], True
    return text, False


def test_stop_strings_cut_before_the_first_one_and_never_leak(seed):
    rng = random.Random(seed)
    tok = ByteTokenizer()
    for _ in range(300):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40)))
        stops = []
        for _ in range(rng.randint(1, 4)):
            if text and rng.random() < 0.6:  # a piece of the text (found) or random (maybe not)
                i = rng.randrange(len(text))
                stops.append(text[i : i + rng.randint(1, 5)])
            else:
                stops.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 4))))
        want, stopped = _expected(text, stops)
        reply = ReplyText(tok, stops)
        pieces = _feed(reply, tok.encode(text))
        released = ""
        for piece in pieces:
            released += piece
            assert want.startswith(released), (text, stops, pieces)  # nothing released is taken back
        assert released == want == reply.text, (text, stops, pieces)
        assert reply.stopped is stopped


def test_text_is_held_back_only_while_it_can_become_a_stop_string():
    tok = ByteTokenizer()
    reply = ReplyText(tok, ["\n\nUser:"])
    assert [reply.push(t) for t in tok.encode("Hi\n\nUs")] == ["H", "i", "", "", "", ""]
    assert reply.push(ord("e")) == ""  # "\n\nUse" can still become the stop string
    assert reply.push(ord("d")) == "\n\nUsed"  # now it cannot
    assert not reply.stopped


def test_no_stop_strings_releases_whole_characters_as_they_complete():
    tok = ByteTokenizer()
    reply = ReplyText(tok)
    assert [reply.push(t) for t in tok.encode("€a")] == ["", "", "€", "a"]
    assert reply.finish() == ""


def test_empty_stop_string_is_refused():
    with pytest.raises(ValueError, match="non-empty"):
        ReplyText(ByteTokenizer(), ["ok", ""])


def test_token_by_token_equals_decoding_the_whole_reply(smol_tokenizer, seed):
    rng = random.Random(seed)
    words = ["The", " capital", " of", " France", " is", " Paris", ".", "\n", " naïve", " café", " 😀", "  ", "Ω"]
    specials = [smol_tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    for _ in range(20):
        ids = smol_tokenizer("".join(rng.choice(words) for _ in range(rng.randint(1, 30))))["input_ids"]
        for _ in range(rng.randint(0, 3)):  # special tokens decode to nothing
            ids.insert(rng.randint(0, len(ids)), rng.choice(specials))
        pieces = _feed(ReplyText(smol_tokenizer), ids)
        assert "".join(pieces) == smol_tokenizer.decode(ids, skip_special_tokens=True), ids
