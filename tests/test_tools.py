"""Tools: schemas from type hints and docstrings, safe execution with timeouts."""

import asyncio
import json

import pytest

from gateway.tools.registry import ToolContext, ToolRegistry, end_call_tool, load_tools_module, tool_from_function

CONTEXT = ToolContext("CA1", "MZ1", {})


def test_schema_comes_from_type_hints_and_docstrings():
    tools = {tool.name: tool for tool in load_tools_module("tests.sample_tools")}
    assert set(tools) == {"check_order", "book_slot", "hang_forever", "broken", "wait_forever"}
    check = tools["check_order"].definition()
    assert check["description"] == "Look up an order's status."
    assert check["parameters"]["properties"]["order_id"] == {
        "type": "string", "description": 'The order number the caller gives, e.g. "A-1234".'}
    assert check["parameters"]["required"] == ["order_id"]
    assert check["parameters"]["additionalProperties"] is False
    book = tools["book_slot"].definition()["parameters"]
    assert book["properties"]["day"]["enum"] == ["monday", "tuesday"]
    assert "context" not in book["properties"]


async def test_running_tools_validates_arguments_and_contains_failures():
    registry = ToolRegistry(load_tools_module("tests.sample_tools") + [end_call_tool()], timeout_s=0.5)
    assert registry.is_builtin("end_call") and not registry.is_builtin("check_order")
    assert json.loads(await registry.run("check_order", '{"order_id": "A1"}', CONTEXT)) == {"order_id": "A1", "status": "shipped"}
    assert await registry.run("book_slot", '{"day": "monday", "hour": 10}', CONTEXT) == "booked monday at 10 for CA1"
    assert "invalid arguments" in json.loads(await registry.run("book_slot", '{"day": "sunday", "hour": 10}', CONTEXT))["error"]
    assert "invalid arguments" in json.loads(await registry.run("check_order", "not json", CONTEXT))["error"]
    assert "invalid arguments" in json.loads(await registry.run("check_order", '{"order_id": "A", "x": 1}', CONTEXT))["error"]
    assert json.loads(await registry.run("broken", "{}", CONTEXT)) == {"error": "the tool broken failed (RuntimeError)"}
    assert "did not answer within 0.5 s" in json.loads(await registry.run("hang_forever", "{}", CONTEXT))["error"]
    assert "no tool named" in json.loads(await registry.run("nope", "{}", CONTEXT))["error"]


def test_functions_the_model_cannot_call_are_refused():
    def variadic(*args: str) -> None:
        """Nope."""

    with pytest.raises(ValueError, match="args"):
        tool_from_function(variadic)
    with pytest.raises(ValueError, match="two tools"):
        ToolRegistry([end_call_tool(), end_call_tool()])


async def test_hung_sync_tools_cannot_take_more_than_their_own_threads():
    registry = ToolRegistry(load_tools_module("tests.sample_tools"), timeout_s=0.2, max_threads=2)
    calls = [ToolContext(f"CA{n}", f"MZ{n}", {}) for n in range(3)]
    first = await asyncio.gather(*(registry.run("hang_forever", "{}", context) for context in calls[:2]))
    assert all("did not answer" in json.loads(r)["error"] for r in first)
    # Both threads are still stuck in the hung tool: the next sync call is refused at once, not queued.
    assert "busy" in json.loads(await registry.run("check_order", '{"order_id": "A1"}', calls[2]))["error"]
    # The loop's default pool (used by Twilio REST and the store) is untouched.
    assert await asyncio.to_thread(lambda: "free") == "free"


async def test_an_async_tool_that_swallows_cancellation_is_abandoned_at_the_timeout():
    async def stubborn() -> str:
        """Ignores cancellation."""
        for _ in range(20):
            try:
                await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                pass
        return "late"

    registry = ToolRegistry([tool_from_function(stubborn)], timeout_s=0.2)
    started = asyncio.get_running_loop().time()
    assert "did not answer" in json.loads(await registry.run("stubborn", "{}", CONTEXT))["error"]
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_long_tool_output_is_cut_as_valid_json():
    def huge() -> str:
        """Big."""
        return "x" * 100_000

    registry = ToolRegistry([tool_from_function(huge)])
    output = json.loads(await registry.run("huge", "{}", CONTEXT))
    assert output["truncated"] is True and len(output["start"]) < 16_000


async def test_one_call_cannot_take_more_than_its_share_of_the_tool_pool():
    registry = ToolRegistry(load_tools_module("tests.sample_tools"), timeout_s=0.2, max_threads=4,
                            max_threads_per_call=1)
    greedy, other = ToolContext("CAgreedy", "MZ1", {}), ToolContext("CAother", "MZ2", {})
    assert "did not answer" in json.loads(await registry.run("hang_forever", "{}", greedy))["error"]
    # The greedy call's thread is still hung: its next tool is refused, while another call's tool runs.
    assert "busy" in json.loads(await registry.run("check_order", '{"order_id": "A1"}', greedy))["error"]
    assert json.loads(await registry.run("check_order", '{"order_id": "A1"}', other))["status"] == "shipped"


async def test_an_async_tool_is_cancelled_with_its_call():
    cancelled = asyncio.Event()

    async def slow_lookup() -> str:
        """Takes long."""
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "late"

    registry = ToolRegistry([tool_from_function(slow_lookup)], timeout_s=60)
    run = asyncio.create_task(registry.run("slow_lookup", "{}", CONTEXT))
    await asyncio.sleep(0.05)
    run.cancel()  # what the shell does to a call's background work when the call ends
    with pytest.raises(asyncio.CancelledError):
        await run
    await asyncio.wait_for(cancelled.wait(), 1)
