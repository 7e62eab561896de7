"""The README's settings table, generated from the declarations: ``python -m gateway.config --markdown`` prints
it, ``--readme README.md`` rewrites it in place between its two markers, and a test fails when they differ."""

from __future__ import annotations

from typing import Any, Iterable

from .setting import Setting

BEGIN = "<!-- settings table: generated from gateway/config/ by `python -m gateway.config --readme README.md` -->"
END = "<!-- end of the settings table -->"


def variables(setting: Setting[Any]) -> tuple[str, ...]:
    """The variables one README row names."""
    return (setting.env, *setting.also)


def markdown_table(declared: Iterable[Setting[Any]]) -> str:
    """One row per setting read from the environment: its variables, its default and its description."""
    lines = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for setting in declared:
        if not setting.env:
            continue  # computed from other settings: documented with them
        names = " / ".join(f"`{name}`" for name in variables(setting))
        cells = (names, setting.shown_default(), setting.doc)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def readme_block(text: str) -> str:
    """The generated part of a README: the table between the markers (ValueError when they are missing); a blank
    line ends the table before the closing marker."""
    start, end = text.index(BEGIN) + len(BEGIN) + 1, text.index(END)
    return text[start:end].removesuffix("\n")


def with_table(text: str, table: str) -> str:
    """``text`` with the block between the markers replaced by ``table``."""
    start, end = text.index(BEGIN) + len(BEGIN) + 1, text.index(END)
    return text[:start] + table + "\n" + text[end:]
