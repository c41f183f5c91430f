"""Token ids -> text deltas that are safe to show: incremental detokenizing with stop strings.

Two things make a token's text not final yet. A byte-level BPE token may carry only part of a
multi-byte UTF-8 character (an emoji, a Chinese character), which decodes to U+FFFD until the rest
arrives; and the text may be the beginning of a stop string (`"\\n\\nUser:"` reached over three
tokens), which must not be shown if the stop string completes. `TextStream` holds such text back.

Decoding is incremental as in vLLM's detokenizer and Hugging Face's `TextStreamer`: each push decodes
a short window of the last ids (from the previous emission on), not the whole text, and the text
before the window is never decoded again. The window starts a few ids back so that tokenizers whose
decoding depends on the previous token (SentencePiece's leading space) decode the new token as they
would in context.
"""

from __future__ import annotations

from collections.abc import Sequence

CONTEXT_IDS = 5  # prompt ids decoded with the first new token (vLLM's initial offset)
_REPLACEMENT = "\ufffd"


class TextStream:
    """Incremental detokenizer with stop strings: turns token ids into safe text deltas.

    `push` returns the text that a new token makes final and whether a stop string completed; the
    returned text never includes the stop string (nor anything after it). `flush` returns the text
    still held back at the end. Without a stop, the concatenated deltas plus `flush()` equal the
    decoding of all pushed ids (for tokenizers whose decoding is a concatenation, like byte-level BPE).
    """

    def __init__(self, tokenizer, stop: Sequence[str] = (), prompt_ids: Sequence[int] = ()) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self._ids = [int(i) for i in list(prompt_ids)[-CONTEXT_IDS:]]
        self._prefix = 0  # self._ids[_prefix:_read] is context that was already emitted (or is prompt)
        self._read = len(self._ids)  # ids from here on are not emitted yet
        self._pending = ""  # decoded text held back: it may start a stop string
        self.text = ""
        """All final text so far."""
        self.stopped = False
        """Whether a stop string completed (nothing more is emitted then)."""
        self.stop_string: str | None = None
        """The stop string that completed, if one did."""

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one token; return (new text that is final, stopped?). After a stop: ("", True)."""
        if self.stopped:
            return "", True
        self._ids.append(int(token_id))
        return self._release(self._decode_new(final=False), final=False)

    def flush(self) -> str:
        """The held-back text at the end of generation (when no stop string completed)."""
        if self.stopped:
            return ""
        delta, _ = self._release(self._decode_new(final=True), final=True)
        self._pending = ""
        return delta

    def _decode_new(self, final: bool) -> str:
        """Text of the ids not emitted yet, or "" while it ends in an incomplete character (unless `final`)."""
        if self._read == len(self._ids):
            return ""
        before = self.tokenizer.decode(self._ids[self._prefix:self._read])
        window = self.tokenizer.decode(self._ids[self._prefix:])
        if len(window) <= len(before) or (window.endswith(_REPLACEMENT) and not final):
            return ""
        # The new ids become the next window's context; older ids are never decoded again.
        del self._ids[:self._read]
        self._prefix, self._read = 0, len(self._ids)
        return window[len(before):]

    def _release(self, new_text: str, final: bool) -> tuple[str, bool]:
        """Emit what cannot be (the start of) a stop string; stop at the first completed one."""
        text = self._pending + new_text
        hit, at = None, len(text)
        for s in self.stop:
            i = text.find(s)
            if i != -1 and i < at:
                hit, at = s, i
        if hit is not None:
            self.stopped, self.stop_string, self._pending = True, hit, ""
            self.text += text[:at]
            return text[:at], True
        keep = 0 if final else _partial_stop_length(text, self.stop)
        out, self._pending = text[:len(text) - keep], text[len(text) - keep:]
        self.text += out
        return out, False


def _partial_stop_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        j = text.find(s[0], max(0, len(text) - len(s) + 1))
        while j != -1:  # the first (leftmost) start that matches is the longest suffix
            if s.startswith(text[j:]):
                best = max(best, len(text) - j)
                break
            j = text.find(s[0], j + 1)
    return best
