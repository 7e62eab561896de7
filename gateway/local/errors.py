"""The one exception the local server's parsers raise: a client mistake, sent back as an ``error`` event."""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """A recoverable error in a client event; becomes ``{"type":"error","error":{...}}``, socket stays open."""

    def __init__(
        self, message: str, code: str | None = None, param: str | None = None, kind: str = "invalid_request_error"
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.kind = kind


def require(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], param: str | None = None) -> Any:
    """``obj[key]`` if present and of type ``kind``, else the ClientError OpenAI would answer."""
    name = param or key
    value = obj.get(key)
    if value is None:
        raise ClientError(f"Missing required parameter: '{name}'.", "missing_required_parameter", name)
    check_type(value, kind, name)
    return value


def check_type(value: Any, kind: type | tuple[type, ...], name: str) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:  # bool is an int subclass; JSON true is not a number
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        expected = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
        got = _JSON_NAMES.get(type(value), type(value).__name__)
        raise ClientError(f"Invalid type for '{name}': expected {expected}, but got {got}.", "invalid_type", name)


_JSON_NAMES = {str: "a string", int: "an integer", float: "a decimal", bool: "a boolean", dict: "an object", list: "an array", type(None): "null"}
