"""Model prices and a call's token usage.

Usage comes from every ``response.done`` (``response.usage``). OpenAI's billing rule: ``input_token_details``
counts text and audio tokens *including* the cached ones; ``cached_tokens_details`` says how many of each were
cached (billed at the cached price); the rest is billed at the input price; output tokens by modality. Prices are
USD per million tokens, from OpenAI's published model pages (Realtime models, audio and text); a JSON file
(``PRICE_TABLE_FILE``) or ``MODEL_PRICES`` overrides them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

KINDS = ("text_in", "text_cached", "text_out", "audio_in", "audio_cached", "audio_out")
MAX_TOKENS_PER_RESPONSE = 10_000_000  # a usage figure past this is a hostile or broken peer: ignored


@dataclass(frozen=True)
class Prices:
    """USD per million tokens of each kind."""

    text_in: float
    text_cached: float
    text_out: float
    audio_in: float
    audio_cached: float
    audio_out: float


_GPT_REALTIME = Prices(text_in=4.0, text_cached=0.4, text_out=16.0, audio_in=32.0, audio_cached=0.4, audio_out=64.0)
_GPT_REALTIME_MINI = Prices(text_in=0.6, text_cached=0.06, text_out=2.4, audio_in=10.0, audio_cached=0.3, audio_out=20.0)
DEFAULT_PRICES: dict[str, Prices] = {
    "gpt-realtime": _GPT_REALTIME,
    "gpt-realtime-1.5": _GPT_REALTIME,
    "gpt-realtime-2": Prices(text_in=4.0, text_cached=0.4, text_out=24.0, audio_in=32.0, audio_cached=0.4, audio_out=64.0),
    "gpt-realtime-mini": _GPT_REALTIME_MINI,
    "gpt-realtime-2.1-mini": _GPT_REALTIME_MINI,
    "gpt-4o-realtime-preview": Prices(text_in=5.0, text_cached=2.5, text_out=20.0, audio_in=40.0, audio_cached=2.5, audio_out=80.0),
    "gpt-4o-mini-realtime-preview": Prices(text_in=0.6, text_cached=0.3, text_out=2.4, audio_in=10.0, audio_cached=0.3, audio_out=20.0),
}
# The embedded server (no API key) runs on this machine: its usage figures are real counts, but nobody bills them.
EMBEDDED_MODEL_PRICES = Prices(text_in=0.0, text_cached=0.0, text_out=0.0, audio_in=0.0, audio_cached=0.0, audio_out=0.0)


class PriceError(ValueError):
    """A price table or override that does not parse."""


def _prices_from(data: Mapping[str, Any], base: Prices | None, where: str) -> Prices:
    values = asdict(base) if base is not None else {}
    for key, value in data.items():
        if key not in KINDS:
            raise PriceError(f"{where}: unknown price {key!r} (known: {', '.join(KINDS)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10_000:
            raise PriceError(f"{where}: {key} must be a number of USD per million tokens")
        values[key] = float(value)
    missing = [kind for kind in KINDS if kind not in values]
    if missing:
        raise PriceError(f"{where}: missing {', '.join(missing)}")
    return Prices(**values)


def load_price_table(path: str = "", overrides: str = "", model: str = "", *,
                     embedded: bool = False) -> dict[str, Prices]:
    """The default table, then a JSON file ``{"model": {"audio_in": 32, ...}}``, then ``kind=price,...`` overrides
    for ``model`` (``MODEL_PRICES``). ``embedded``: ``model`` is served by the embedded server, which costs
    nothing unless the file or the overrides price it (to try budgets on a laptop)."""
    table = dict(DEFAULT_PRICES)
    if embedded:
        table[model] = EMBEDDED_MODEL_PRICES
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as error:
            raise PriceError(f"PRICE_TABLE_FILE {path}: {error}") from error
        if not isinstance(data, dict):
            raise PriceError(f"PRICE_TABLE_FILE {path}: expected an object of models")
        for name, prices in data.items():
            if not isinstance(prices, dict):
                raise PriceError(f"PRICE_TABLE_FILE {path}: {name} must be an object of prices")
            table[name] = _prices_from(prices, table.get(name), f"PRICE_TABLE_FILE {name}")
    if overrides:
        pairs: dict[str, float] = {}
        for part in overrides.split(","):
            key, _, value = part.partition("=")
            try:
                pairs[key.strip()] = float(value)
            except ValueError:
                raise PriceError(f"MODEL_PRICES: {part!r} is not kind=price") from None
        table[model] = _prices_from(pairs, prices_for(model, table), "MODEL_PRICES")
    return table


def prices_for(model: str, table: Mapping[str, Prices]) -> Prices | None:
    """The model's prices: its own entry, or that of the longest name it is a dated snapshot of."""
    if model in table:
        return table[model]
    best = max((name for name in table if model.startswith(name + "-")), key=len, default=None)
    return table[best] if best is not None else None


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > MAX_TOKENS_PER_RESPONSE:
        return 0
    return value


@dataclass
class Usage:
    """Tokens by kind, cached input apart from uncached."""

    text_in: int = 0
    text_cached: int = 0
    text_out: int = 0
    audio_in: int = 0
    audio_cached: int = 0
    audio_out: int = 0

    @classmethod
    def from_response(cls, usage: Any) -> "Usage":
        """``response.done``'s ``usage`` (anything malformed counts as zero: it is the model's word, not ours)."""
        if not isinstance(usage, dict):
            return cls()
        details = usage.get("input_token_details")
        details = details if isinstance(details, dict) else {}
        cached = details.get("cached_tokens_details")
        cached = cached if isinstance(cached, dict) else {}
        output = usage.get("output_token_details")
        output = output if isinstance(output, dict) else {}
        text_cached, audio_cached = _count(cached.get("text_tokens")), _count(cached.get("audio_tokens"))
        return cls(
            text_in=max(0, _count(details.get("text_tokens")) - text_cached),
            text_cached=text_cached,
            text_out=_count(output.get("text_tokens")),
            audio_in=max(0, _count(details.get("audio_tokens")) - audio_cached),
            audio_cached=audio_cached,
            audio_out=_count(output.get("audio_tokens")),
        )

    def add(self, other: "Usage") -> None:
        for kind in KINDS:
            setattr(self, kind, getattr(self, kind) + getattr(other, kind))

    def cost_usd(self, prices: Prices | None) -> float:
        if prices is None:
            return 0.0
        return sum(getattr(self, kind) * getattr(prices, kind) for kind in KINDS) / 1_000_000

    def as_dict(self) -> dict[str, int]:
        return {field.name: getattr(self, field.name) for field in fields(self)}
