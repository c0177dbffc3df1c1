"""Text <-> token ids for random-weight models (there is no trained tokenizer to honour).

The mapping is per token, so a stream's pieces concatenate to the whole text and
`encode(decode(ids)) == ids` for every id list:

- decode: a printable ASCII id (32..126) other than '<' (60), or tab / newline, is that
  character; every other id N (control bytes, '<', non-ASCII bytes, ids >= 128 up to the
  vocabulary) is written `<|N|>`.
- encode: `<|N|>` is id N; any other character is its UTF-8 bytes, one id per byte.

So ASCII text without '<' round-trips as text too, and a client may send token ids directly
(`prompt` as a list of ints, as the OpenAI completions API allows).
"""

from __future__ import annotations

import re

_SPECIAL = re.compile(r"<\|(\d{1,9})\|>")
_LT = ord("<")


def piece(token: int) -> str:
    """The text of one token id."""
    if (32 <= token < 127 and token != _LT) or token in (9, 10):
        return chr(token)
    return f"<|{token}|>"


def decode(ids: list[int]) -> str:
    return "".join(piece(t) for t in ids)


def encode(text: str) -> list[int]:
    ids: list[int] = []
    pos = 0
    for m in _SPECIAL.finditer(text):
        ids.extend(text[pos:m.start()].encode("utf-8"))
        ids.append(int(m.group(1)))
        pos = m.end()
    ids.extend(text[pos:].encode("utf-8"))
    return ids


def chat_prompt(messages: list[dict]) -> str:
    """Chat messages as one prompt: `role: content` lines and a trailing `assistant:` (a fixed
    template; the model is random, so any template that keeps every message's text will do)."""
    lines = [f"{m.get('role', 'user')}: {_content(m.get('content'))}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


def _content(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    # the list-of-parts form: keep the text parts
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))
