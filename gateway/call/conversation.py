"""The conversation so far, as text, to carry into a replacement model session (pure, bounded).

A new Realtime session starts empty and audio cannot be carried over, so the call core re-creates the conversation
as text items. What goes over must be what happened *for the caller*:

* in conversation order: a caller's transcript often arrives after the agent's reply to it, so every item takes
  its place when it begins (speech started, agent audio began, a tool was called), and its text fills it later;
* an agent answer the caller talked over is cut to about what they heard, and says it was interrupted;
* tool calls and their results are part of it (the agent must not look up the same order twice);
* bounded: the latest ``max_items``, each at most ``max_chars``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable

INTERRUPTED = " [the caller interrupted here]"


@dataclass(slots=True)
class _Entry:
    role: str  # "user" or "assistant"
    text: str = ""
    heard_fraction: float | None = None  # the share of an agent answer the caller heard, when cut


class ConversationLog:
    def __init__(self, max_items: int = 60, max_chars: int = 2000) -> None:
        self.max_items = max_items
        self.max_chars = max_chars
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()

    def begin(self, key: Hashable, role: str) -> None:
        """An item began (its text may come later): it takes its place in the conversation now."""
        if key not in self._entries:
            self._entries[key] = _Entry(role)
            while len(self._entries) > self.max_items:
                self._entries.popitem(last=False)

    def text(self, key: Hashable, role: str, text: str) -> None:
        """The item's transcript (an item never begun is placed at the end)."""
        self.begin(key, role)
        entry = self._entries.get(key)
        if entry is not None:
            entry.text = text[: self.max_chars]

    def extend(self, key: Hashable, more: str) -> None:
        """Add to an item's text (a tool call, then its result)."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.text = (entry.text + more)[: self.max_chars]

    def heard(self, key: Hashable, fraction: float) -> None:
        """The caller heard only ``fraction`` of this agent item (a barge-in)."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.heard_fraction = max(0.0, min(1.0, fraction))

    def items(self) -> list[tuple[str, str]]:
        """(role, text) of every item with text, in conversation order, agent answers cut to what was heard."""
        out = []
        for entry in self._entries.values():
            text = entry.text
            if entry.heard_fraction is not None and text:
                cut = text[: int(len(text) * entry.heard_fraction)]
                cut = cut.rsplit(" ", 1)[0] if " " in cut else cut  # end on a whole word
                text = cut + INTERRUPTED
            if text:
                out.append((entry.role, text))
        return out
