"""``python -m gateway.config --markdown``: the README's settings table; ``--readme PATH``: written into PATH."""

from __future__ import annotations

import argparse
import sys

from . import DECLARED
from .table import markdown_table, with_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.config", description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="print the settings table (Markdown)")
    parser.add_argument("--readme", metavar="PATH", help="rewrite the table in this README, between its markers")
    args = parser.parse_args(argv)
    table = markdown_table(DECLARED)
    if args.readme:
        with open(args.readme, encoding="utf-8") as file:
            text = file.read()
        with open(args.readme, "w", encoding="utf-8") as file:
            file.write(with_table(text, table))
    if args.markdown or not args.readme:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
