"""The query-generation prompt and the parsing of its answer (docs/recipes.md#query).

The template is the reference's (``data/production/make_prompt.py``, ``template``), word for
word: four conditions, a YES/NO verdict, and on YES a generic user query that does not leak the
transcript, answered in JSON. The transcript is the clip's words, each stripped, joined with
one space, as the reference's ``get_prompt`` builds it.

The reference sliced its reply between ``json`` and the last triple backtick, so it only read
fenced replies. :func:`parse_reply` reads those, bare JSON and JSON inside other prose.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

#: The reference's prompt, word for word; ``{asr}`` is replaced by the transcript.
TEMPLATE = """This is the speech transcription from a video clip:

"{asr}"

Analyze this transcription and determine if ALL of the following conditions are met:
1. The speech is describing or commenting on real-time video content
2. The speaker is not sharing personal experiences or feelings
3. The transcription is not from multiple people having a conversation
4. the transcription text has no garbled characters

If ALL conditions are met, respond with "YES" and suggest a generic user query that would prompt an AI to generate commentary in a similar style (without including any specific content from the original transcription).

If ANY condition is NOT met, respond with "NO" and no further explanation.

Format your response as JSON:
{"result": "YES" or "NO", "query": "your suggested query here or empty string if result is NO"}
"""

#: The JSON schema for structured output (``response_format``): the template's answer shape.
RESPONSE_SCHEMA: dict[str, Any] = {
    "name": "commentary_query",
    "strict": True,
    "schema": {
        "type": "object",
        "properties": {"result": {"type": "string", "enum": ["YES", "NO"]}, "query": {"type": "string"}},
        "required": ["result", "query"],
        "additionalProperties": False,
    },
}

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


class UnparseableReply(ValueError):
    """The model's reply holds no ``{"result": "YES"|"NO", "query": ...}`` object; ``reply`` is
    the text as received."""

    def __init__(self, reply: str, why: str):
        super().__init__(f"unparseable reply ({why}): {reply[:500]!r}")
        self.reply = reply


def transcript(words: list[dict[str, Any]] | None) -> str:
    """The clip's words joined as the reference does: ``' '.join(w.strip() for each word)``."""
    return " ".join(str(w.get("text") or "").strip() for w in (words or []))


def build_prompt(text: str, template: str = TEMPLATE) -> str:
    """The user message for one transcript (``str.replace``, as the reference: braces in the
    transcript or the JSON example are left alone)."""
    return template.replace("{asr}", text)


def template_hash(template: str) -> str:
    """sha256 (16 hex digits) of a template: part of the response-cache key."""
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]


def parse_reply(reply: str | None) -> tuple[str, str]:
    """``(result, query)`` from a reply: ``result`` is ``"YES"`` or ``"NO"``; ``query`` is the
    stripped query (``""`` on NO).

    Reads, in order: the body of a fenced block (```` ```json ... ``` ````), the whole reply as
    JSON, then the first ``{...}`` object in the reply.

    Raises:
        UnparseableReply: no such object, a result other than YES/NO, or YES with an empty query.
    """
    text = (reply or "").strip()
    if not text:
        raise UnparseableReply(reply or "", "empty")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    obj = None
    for c in candidates:
        try:
            value = json.loads(c.strip())
        except ValueError:
            continue
        if isinstance(value, dict):
            obj = value
            break
    if obj is None:
        raise UnparseableReply(text, "no JSON object")
    result = str(obj.get("result", "")).strip().upper()
    if result not in ("YES", "NO"):
        raise UnparseableReply(text, f"result {obj.get('result')!r} is neither YES nor NO")
    query = obj.get("query")
    query = query.strip() if isinstance(query, str) else ""
    if result == "YES" and not query:
        raise UnparseableReply(text, "YES without a query")
    return result, (query if result == "YES" else "")
