"""Counts words: ``{"text": "...", "top": 5}`` -> totals and top words.

Also accepts a plain string as the message."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

WORD = re.compile(r"[\w']+", re.UNICODE)


def handle(message: Any, ctx: Any) -> dict[str, Any]:
    if isinstance(message, str):
        message = {"text": message}
    if not isinstance(message, dict) or not isinstance(message.get("text"), str):
        raise ValueError('wordcount expects {"text": "..."} or a string')
    top = int(message.get("top", 5))
    words = [w.lower() for w in WORD.findall(message["text"])]
    counts = Counter(words)
    ctx.log(f"counted {len(words)} words, {len(counts)} distinct")
    return {
        "words": len(words),
        "distinct": len(counts),
        "lines": message["text"].count("\n") + (1 if message["text"] else 0),
        "top": [[w, n] for w, n in counts.most_common(top)],
    }
