"""A user tools module for the tests (TOOLS_MODULE=tests.sample_tools)."""

import asyncio
import time
from typing import Literal


def check_order(order_id: str, include_items: bool = False) -> dict:
    """Look up an order's status.

    Args:
        order_id: The order number the caller gives, e.g. "A-1234".
        include_items: Whether to list the items too.
    """
    result = {"order_id": order_id, "status": "shipped"}
    if include_items:
        result["items"] = ["kettle"]
    return result


async def book_slot(day: Literal["monday", "tuesday"], hour: int, context=None) -> str:
    """Book an appointment slot.

    Args:
        day: The day of the week.
        hour: The hour, 9 to 17.
    """
    await asyncio.sleep(0)
    return f"booked {day} at {hour} for {context.call_sid if context else 'nobody'}"


def hang_forever() -> str:
    """A tool that never answers in time."""
    time.sleep(1)
    return "too late"


def broken() -> str:
    """A tool with a bug."""
    raise RuntimeError("database is down")


def _private_helper() -> None:
    pass


async def wait_forever() -> str:
    """A tool whose backend never answers."""
    await asyncio.sleep(3600)
    return "never"
