"""Chat exports in JSON: message lists (Slack, Discord, Telegram style) and ChatGPT conversations.

Field names differ between exporters, so each field is looked up under its common aliases.
"""

from __future__ import annotations

import re
from typing import Any

from docreader.loaders.chat import Message
from docreader.loaders.chat_time import parse_when

SPEAKER_KEYS = ("author", "speaker", "user_name", "username", "user", "name", "from", "sender", "role")
TIME_KEYS = ("time", "ts", "timestamp", "date", "datetime", "created_at", "create_time", "sent_at")
TEXT_KEYS = ("text", "content", "message", "body", "msg", "parts")
LIST_KEYS = ("messages", "chat", "conversation", "turns", "transcript", "history")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _valid(text: str) -> str:
    """JSON may escape lone surrogates ("\\ud800"), which no encoder or tokenizer accepts: U+FFFD instead."""
    return _SURROGATE.sub("\ufffd", text)


def _text_of(value: Any) -> str:
    """Message text from a string, a list of parts/entities, or a dict with text/parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        pieces = [_text_of(v) for v in value]
        # Telegram-style entity lists mix strings and {"type", "text"} pieces of one sentence;
        # plain lists (ChatGPT "parts") are separate paragraphs.
        joiner = "" if any(isinstance(v, dict) for v in value) else "\n"
        return joiner.join(p for p in pieces if p)
    if isinstance(value, dict):
        for key in ("text", "parts", "content", "value"):
            if key in value:
                return _text_of(value[key])
    return ""


def _speaker_of(msg: dict) -> str:
    profile = msg.get("user_profile")
    if isinstance(profile, dict):
        for key in ("display_name", "real_name", "name"):
            if profile.get(key):
                return str(profile[key])
    for key in SPEAKER_KEYS:
        value = msg.get(key)
        if isinstance(value, dict):
            value = value.get("name") or value.get("username") or value.get("display_name") or value.get("role")
        if isinstance(value, (str, int)) and str(value).strip():
            return str(value).strip()
    return "unknown"


def _first(msg: dict, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in msg and msg[key] not in (None, ""):
            return msg[key]
    return None


def _message(msg: dict, thread: str | None = None) -> Message | None:
    text = _text_of(_first(msg, TEXT_KEYS))
    if not text.strip():
        return None
    date, time = parse_when(_first(msg, TIME_KEYS))
    return Message(_valid(_speaker_of(msg)), _valid(text), time, date, thread=_valid(thread) if thread else thread)


def _is_message(item: Any) -> bool:
    return isinstance(item, dict) and any(k in item for k in TEXT_KEYS) and (
        any(k in item for k in SPEAKER_KEYS) or any(k in item for k in TIME_KEYS))


def _message_list(obj: Any) -> list | None:
    if isinstance(obj, dict):
        for key in LIST_KEYS:
            if isinstance(obj.get(key), list):
                return obj[key]
        return None
    return obj if isinstance(obj, list) else None


def _chatgpt_messages(conv: dict) -> list[Message]:
    """Walk a ChatGPT conversation from its current node up to the root, then read it forwards."""
    mapping: dict = conv.get("mapping") or {}
    node_id = conv.get("current_node")
    if node_id not in mapping:  # no pointer: follow first children from the root
        roots = [k for k, v in mapping.items() if isinstance(v, dict) and not v.get("parent")]
        node_id = roots[0] if roots else None
        while node_id and (mapping.get(node_id) or {}).get("children"):
            node_id = mapping[node_id]["children"][0]
    chain, seen = [], set()
    while node_id and node_id in mapping and node_id not in seen:
        seen.add(node_id)
        chain.append(mapping[node_id])
        node_id = mapping[node_id].get("parent")
    title = str(conv.get("title") or "conversation")
    out = []
    for node in reversed(chain):
        raw = node.get("message") if isinstance(node, dict) else None
        if not isinstance(raw, dict):
            continue
        author = raw.get("author") or {}
        if isinstance(author, dict) and author.get("role") == "system":
            continue
        msg = _message(raw, thread=title)
        if msg:
            out.append(msg)
    return out


def is_chatgpt(obj: Any) -> bool:
    items = obj if isinstance(obj, list) else [obj]
    return bool(items) and all(isinstance(c, dict) and isinstance(c.get("mapping"), dict) for c in items)


def looks_like_chat(obj: Any) -> bool:
    """True for JSON holding chat messages (checked on the first few items)."""
    if is_chatgpt(obj):
        return True
    items = _message_list(obj)
    if not items:
        return False
    head = items[:20]
    return sum(_is_message(m) for m in head) >= max(1, len(head) // 2)


def parse_json_chat(obj: Any) -> list[Message]:
    if is_chatgpt(obj):
        convs = obj if isinstance(obj, list) else [obj]
        return [m for conv in convs for m in _chatgpt_messages(conv)]
    items = _message_list(obj) or []
    return [m for m in (_message(item) for item in items if isinstance(item, dict)) if m]
