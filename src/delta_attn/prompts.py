"""Prompt assembly: the model's chat template split around one user message.

Long-context prompts are built from pieces (a haystack tokenised once, needles, a question), so the
chat template is needed as two strings, the text before the user's message and the text after it,
rather than as one rendered prompt. :func:`chat_frame` renders the template once around a sentinel
and splits it there; ``demo``, ``generate`` and the RULER-style generators all use it.
"""

from __future__ import annotations

from dataclasses import dataclass

SENTINEL = "\x00CONTENT\x00"


@dataclass(frozen=True)
class ChatFrame:
    """``head + message + tail`` is the rendered prompt for one user ``message``, ending with the
    assistant turn's header (so the model's next token starts the reply)."""

    head: str
    tail: str

    def render(self, message: str, answer_prefix: str = "") -> str:
        """The whole prompt for ``message``, the assistant turn opened with ``answer_prefix``."""
        return self.head + message + self.tail + answer_prefix

    def around(self, before_context: str, after_context: str, answer_prefix: str = "") -> tuple[str, str]:
        """(prompt text before a context, prompt text after it) for a user message that reads
        ``before_context + <context> + after_context``; the assistant turn opens with ``answer_prefix``."""
        return self.head + before_context, after_context + self.tail + answer_prefix


#: no chat template: the message as is, then a newline before the answer
PLAIN = ChatFrame("", "\n")


def chat_frame(tokenizer, *, chat: bool = True) -> ChatFrame:
    """The tokenizer's chat template around one user message (:data:`PLAIN` when ``chat`` is False or
    the tokenizer has no template). Raises ``ValueError`` for a template that does not insert the
    message verbatim exactly once (splitting it would then give wrong prompts)."""
    if not chat or not getattr(tokenizer, "chat_template", None):
        return PLAIN
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": SENTINEL}], tokenize=False, add_generation_prompt=True
    )
    if rendered.count(SENTINEL) != 1:
        raise ValueError("the tokenizer's chat template does not insert the user message verbatim exactly once")
    head, tail = rendered.split(SENTINEL)
    return ChatFrame(head, tail)
