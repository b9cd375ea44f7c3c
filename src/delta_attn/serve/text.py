"""The text of a reply as its tokens arrive: complete characters only, cut before the first stop string.

Streaming and non-streaming answers both come out of :class:`ReplyText`, so the same tokens give the
same text either way. Each token is decoded together with a few tokens before it (the offsets trick of
text-generation servers): the cost per token stays constant, byte-level pieces are released only once
they form whole characters, and tokenizers that drop a word's leading space when it is decoded alone
keep it. The reply ends at the token that completes a stop string and is cut before the earliest stop
string it then holds. Text that could still turn into a stop string (``"\\n\\nUs"`` while ``"\\n\\nUser:"`` is a
stop) is held back until it cannot, so no part of a stop string ever reaches the client (OpenAI's rule:
the stop sequence is not part of the reply).
"""

from __future__ import annotations

from collections.abc import Sequence

_INCOMPLETE = "\ufffd"  # what decode() shows for the bytes of a character that has not fully arrived


class ReplyText:
    """Accumulates a reply token by token.

    Args:
        tokenizer: a transformers tokenizer (``decode`` with ``skip_special_tokens`` is all it needs).
        stop: stop strings (non-empty); the reply ends before the first one that appears.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = ()) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self._tokenizer = tokenizer
        self._stop = tuple(stop)
        self._ids: list[int] = []
        self._prefix = 0  # ids[prefix:read] were decoded already: the context that keeps spaces right
        self._read = 0
        self.text = ""  # decoded so far (cut at a stop string once one appears)
        self._released = 0  # characters of `text` handed out by push()/finish()
        self.stopped = False  # a stop string appeared

    def push(self, token: int) -> str:
        """Add one generated token; returns the text that became final (maybe ``""``)."""
        if self.stopped:
            return ""
        self._ids.append(int(token))
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith(_INCOMPLETE):
            return ""  # a special token (decodes to nothing) or half a character
        searched_from = max(0, len(self.text) - max((len(s) for s in self._stop), default=0))
        self.text += after[len(before) :]
        self._prefix, self._read = self._read, len(self._ids)
        return self._release(searched_from)

    def finish(self) -> str:
        """The text still held back when the reply ends (it can no longer become a stop string)."""
        rest = self.text[self._released :]
        self._released = len(self.text)
        return rest

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def _release(self, searched_from: int) -> str:
        hits = [i for i in (self.text.find(s, searched_from) for s in self._stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            return self.finish()
        end = len(self.text) - self._held_back()
        out = self.text[self._released : end]
        self._released = max(self._released, end)
        return out

    def _held_back(self) -> int:
        """Length of the longest end of ``text`` that is the beginning of a stop string."""
        longest = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest
