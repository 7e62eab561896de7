"""Running a command's coroutine to an exit status, the same way for every ``gateway`` command that measures or
attacks (bench, fuzz): bad options 2, Ctrl-C 130, SIGTERM 143, a failed run (``RuntimeError``) 1."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Coroutine


class Stopped(Exception):
    """The run did not finish; ``status`` is the exit status to return (its message is already printed)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def run_command(name: str, coroutine: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run(coroutine)``; its result, or :class:`Stopped` with the status after saying why on stderr."""
    try:
        return asyncio.run(coroutine)
    except ValueError as error:
        print(f"gateway {name}: {error}", file=sys.stderr)
        raise Stopped(2) from None
    except KeyboardInterrupt:
        print(f"gateway {name}: interrupted", file=sys.stderr)
        raise Stopped(130) from None
    except asyncio.CancelledError:  # SIGTERM
        print(f"gateway {name}: terminated", file=sys.stderr)
        raise Stopped(143) from None
    except RuntimeError as error:
        print(f"gateway {name}: {error}", file=sys.stderr)
        raise Stopped(1) from None
