"""One setting's declaration (:class:`Setting`) and the readers of environment values that bound them.

A declaration holds everything about a setting once: its environment variable, its type (its default's), its
default, its bounds or choices, whether it is a secret, and the README's description of it. ``Settings`` fields,
``Settings.from_env``, the call core's ``CallConfig`` defaults and the README's settings table all derive from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Generic, Mapping, TypeVar, cast

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting has a value the gateway cannot use; the message names the variable."""


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def env_number(env: Mapping[str, str], name: str, default: float, low: float, high: float, kind: type) -> Any:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name} must be {what}, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def env_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (env.get(name) or default).strip()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def comma_list(raw: str | None) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: the items of a comma-separated variable, blanks dropped."""
    return tuple(item.strip() for item in (raw or "").split(",") if item.strip())


class Values:
    """The settings of one ``from_env`` call, each read on first use: a reader may ask for another's value."""

    def __init__(self, env: Mapping[str, str], declared: Mapping[str, "Setting[Any]"]) -> None:
        self.env = env
        self._declared = declared
        self._read: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._read:
            self._read[name] = self._declared[name].read(self)
        return self._read[name]


Reader = Callable[["Setting[Any]", Values], Any]


@dataclass(frozen=True, eq=False)
class Setting(Generic[T]):
    """One setting. ``env`` is its variable ("" for a field computed from other settings, not read itself);
    ``name`` its ``Settings`` field (default: ``env`` in lower case; None: a variable with no field, read by
    another setting's reader or by a library). ``doc`` is the README's "Meaning" cell, ``shown`` its "Default"
    cell when the literal default is not the whole story (``{}`` stands for the literal)."""

    env: str
    default: T
    doc: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    secret: bool = False  # shown as *** by repr(settings); never quoted by an error
    also: tuple[str, ...] = ()  # other variables that set it (named in the same README row)
    scale: int = 1  # the variable's unit in the field's: RECORD_SPOOL_MAX_MB -> bytes
    unit: str = ""  # "bytes": the default is shown in MiB / GiB
    strip: bool = True  # surrounding blanks dropped (not from prompts, which are said as written)
    shown: str = "{}"
    reader: Reader | None = None  # cross-checks beyond the bounds (the default reader: :meth:`parse`)
    name: str | None = ""
    factory: Callable[[], T] | None = None  # a default computed per Settings (INSTANCE_ID)

    def __post_init__(self) -> None:
        if self.name == "":
            object.__setattr__(self, "name", self.env.lower())
        if self.kind in (int, float) and (self.low is None or self.high is None):
            raise TypeError(f"{self.env or self.name}: a number is declared with its bounds (low=, high=)")

    @property
    def kind(self) -> type:
        """The field's type: the default's (bool, int, float, str or tuple)."""
        return type(self.default)

    def field(self) -> T:
        """The ``Settings`` field declared by this setting (typed as its value, for the type checker)."""
        metadata = {"setting": self}  # (at run time a dataclasses.Field, which typeshed types as the value)
        if self.factory is not None:
            return dataclasses.field(default_factory=self.factory, repr=not self.secret, metadata=metadata)
        return dataclasses.field(default=self.default, repr=not self.secret, metadata=metadata)

    def read(self, values: Values) -> T:
        return cast(T, self.reader(self, values)) if self.reader is not None else self.parse(values.env)

    def parse(self, env: Mapping[str, str]) -> T:
        """The variable's value within the declared type and bounds, or a ConfigError naming it."""
        kind, default = self.kind, self.default
        if kind is bool:
            return cast(T, env_bool(env, self.env, cast(bool, default)))
        if kind in (int, float):
            low, high = cast(float, self.low), cast(float, self.high)  # both set (__post_init__)
            given = cast(float, default) // self.scale if self.scale > 1 else cast(float, default)
            value = env_number(env, self.env, given, low, high, kind)
            return cast(T, value * self.scale)
        if kind is tuple:
            return cast(T, comma_list(env.get(self.env)) or default)
        if self.choices:
            return cast(T, env_choice(env, self.env, cast(str, default), self.choices))
        raw = env.get(self.env) or cast(str, default)
        return cast(T, raw.strip() if self.strip else raw)

    def shown_default(self) -> str:
        """The README's "Default" cell."""
        return self.shown.replace("{}", _literal(self))


def _literal(setting: Setting[Any]) -> str:
    value = setting.default
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (int, float)):
        if setting.unit == "bytes":
            for size, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
                if value and value % size == 0:
                    return f"{value // size} {unit}"
        value = value // setting.scale if setting.scale > 1 else value
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, tuple):
        return ", ".join(f"`{item}`" for item in value) if value else "(none)"
    if not value:
        return "(none)"
    return f'"{value}"' if " " in value else f"`{value}`"


def declared_in(namespace: Mapping[str, Any]) -> tuple[Setting[Any], ...]:
    """The settings a declarations module defines, in their order there."""
    return tuple(value for value in namespace.values() if isinstance(value, Setting))
