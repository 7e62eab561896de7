"""Strict check of server events against the official ``openai`` GA models (a test-only dependency).

The models allow extra fields and coerce types, so on top of pydantic's validation (strict mode:
``"5"`` is not an int) this walks the validated tree and rejects any field the models do not declare,
except the few the real API sends beyond the published models (:data:`KNOWN_EXTRAS`).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any, get_args

# Fields the real service sends that the SDK's models do not declare (paths from the event root).
KNOWN_EXTRAS = frozenset({"session.id", "session.object", "session.expires_at"})


class EventSchemaError(ValueError):
    """A server event does not match the official models."""


@lru_cache(maxsize=1)
def _models() -> dict[str, Any]:
    from openai.types.realtime import RealtimeServerEvent  # lazy: openai is only needed to validate

    union = get_args(RealtimeServerEvent)[0]  # Annotated[Union[...], PropertyInfo] -> Union[...]
    by_type: dict[str, Any] = {}
    for model in get_args(union):
        (literal,) = get_args(model.model_fields["type"].annotation)
        by_type[literal] = model
    return by_type


def validate_server_event(event: dict[str, Any]) -> Any:
    """Validate one server event; returns the model instance or raises :class:`EventSchemaError`."""
    import pydantic

    kind = event.get("type") if isinstance(event, dict) else None
    model = _models().get(kind) if isinstance(kind, str) else None
    if model is None:
        raise EventSchemaError(f"unknown server event type {event.get('type') if isinstance(event, dict) else event!r}")
    try:
        instance = model.model_validate(event, strict=True)
    except pydantic.ValidationError as exc:
        raise EventSchemaError(f"{event.get('type')}: {exc}") from exc
    extras = [path for path in _undeclared(instance, "") if path not in KNOWN_EXTRAS]
    if extras:
        raise EventSchemaError(f"{event['type']}: fields not in the official model: {', '.join(extras)}")
    return instance


def _undeclared(value: Any, path: str) -> Iterator[str]:
    import pydantic

    if isinstance(value, pydantic.BaseModel):
        for key in value.model_extra or {}:
            yield f"{path}{key}"
        for name in type(value).model_fields:
            yield from _undeclared(getattr(value, name), f"{path}{name}.")
    elif isinstance(value, list):
        for item in value:
            yield from _undeclared(item, path)
