"""Tools the agent can call (Realtime function calling): the registry, the built-ins, user modules.

* Built-ins are call control, carried out by the call core once what the agent said has been heard:
  ``end_call`` (hang up after the goodbye) and ``transfer_call`` (to the configured number).
* User tools are plain Python functions in a module named by ``TOOLS_MODULE``: every public function
  defined in it (or the functions listed in its ``TOOLS``), looked up on the import path, then in the working
  directory (``my_tools.py`` beside the operator, as the README shows: :func:`import_tools_module`); when it
  cannot be imported, :class:`ToolsModuleError` says why and the fix. The JSON schema of the parameters comes from
  the type hints (through pydantic, which also validates the model's arguments), the description from
  the docstring's first paragraph, and each parameter's description from its ``Args:`` section::

      def check_order(order_id: str, include_items: bool = False) -> dict:
          \"\"\"Look up an order's status.

          Args:
              order_id: The order number the caller gives, e.g. "A-1234".
              include_items: Whether to list the items too.
          \"\"\"

  A sync function runs in a worker thread of the tools' own pool, an async one on the loop; both with
  a timeout, off the audio path. Whatever it returns is sent to the model as JSON; an exception or a
  timeout is sent as ``{"error": "..."}`` (the exception's type only: its text may hold internals the
  agent would read out) so the agent can say something sensible.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import os
import re
import sys
import threading
import traceback
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import pydantic

from gateway.call.outputs import END_CALL, TRANSFER_CALL

log = logging.getLogger("gateway.tools.registry")

MAX_TOOL_OUTPUT_CHARS = 16_000
_ARG_LINE = re.compile(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$")


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool may want to know about the call it runs in (passed if it takes a ``context`` parameter)."""

    call_sid: str
    stream_sid: str
    custom_parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., Any] | None = None  # None: a built-in the call core carries out
    arguments_model: type[pydantic.BaseModel] | None = None
    wants_context: bool = False

    def definition(self) -> dict[str, Any]:
        """The ``session.tools`` entry for this tool."""
        return {"type": "function", "name": self.name, "description": self.description, "parameters": self.parameters}


def _call_control_tool(name: str, description: str, reason: str) -> Tool:
    """A built-in the call core carries out: no function, one optional ``reason`` argument."""
    parameters = {"type": "object", "properties": {"reason": {"type": "string", "description": reason}},
                  "additionalProperties": False}
    return Tool(name, description, parameters)


def end_call_tool() -> Tool:
    return _call_control_tool(
        END_CALL, "End the phone call. Say a short goodbye first; the line is hung up once the caller has heard it.",
        "Why the call ends.")


def transfer_call_tool() -> Tool:
    return _call_control_tool(
        TRANSFER_CALL, "Transfer the caller to a human colleague. Tell the caller you are transferring them first.",
        "Why the caller needs a human.")


def _docstring_parts(doc: str) -> tuple[str, dict[str, str]]:
    """(first paragraph, {parameter: description from an ``Args:`` section})."""
    doc = inspect.cleandoc(doc or "")
    summary = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    params: dict[str, str] = {}
    in_args = False
    for line in doc.splitlines():
        if line.strip().lower() in ("args:", "arguments:", "parameters:"):
            in_args = True
            continue
        if in_args:
            if line.strip() and not line.startswith((" ", "\t")):
                break
            match = _ARG_LINE.match(line)
            if match:
                params[match.group(1)] = match.group(2).strip()
    return summary, params


def tool_from_function(function: Callable[..., Any], name: str | None = None) -> Tool:
    """A tool from a plain function: schema from its type hints, descriptions from its docstring."""
    signature = inspect.signature(function)
    try:
        annotations = typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - forward references that do not resolve: fall back to the raw annotations
        annotations = dict(getattr(function, "__annotations__", {}))
    hints = {k: v for k, v in annotations.items() if k != "return"}
    summary, param_docs = _docstring_parts(function.__doc__ or "")
    fields: dict[str, Any] = {}
    wants_context = False
    for param in signature.parameters.values():
        if param.name == "context":
            wants_context = True
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ValueError(f"tool {function.__name__}: *args/**kwargs cannot be described to the model")
        annotation = hints.get(param.name, str)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, pydantic.Field(default, description=param_docs.get(param.name)))
    model = pydantic.create_model(
        f"{function.__name__}_arguments", __config__=pydantic.ConfigDict(extra="forbid"), **fields
    )
    schema = model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return Tool(name or function.__name__, summary or function.__name__, schema, function, model, wants_context)


_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


class ToolsModuleError(ImportError):
    """``TOOLS_MODULE`` cannot be imported (or its tools cannot be described): ``str()`` says why on one line,
    :attr:`fix` what to do."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix

    def one_line(self) -> str:
        return f"{self.reason}; fix: {self.fix}"


def _working_directory() -> str:
    try:
        return os.getcwd()
    except OSError:  # removed under us: nothing to find there
        return ""


def _own_names(module_name: str) -> set[str]:
    """``a.b.c`` -> ``{a, a.b, a.b.c}``: a ModuleNotFoundError naming one of them means the module itself is missing
    (any other name: something it imports)."""
    parts = module_name.split(".")
    return {".".join(parts[:n]) for n in range(1, len(parts) + 1)}


def _import_error(module_name: str, error: BaseException, where: str) -> ToolsModuleError:
    """Why importing ``module_name`` failed, in one line an operator can act on."""
    from gateway.observe.logsafe import escape_controls

    message = escape_controls(str(error))[:300]
    if isinstance(error, ModuleNotFoundError):
        parts = module_name.split(".")
        if error.name in _own_names(module_name):
            if module_name.endswith(".py"):
                fix = f"name the module, not its file: TOOLS_MODULE={module_name[:-3]}"
            elif error.name != parts[0]:
                fix = f"check the name: the package {error.name.rpartition('.')[0]} has no module {parts[-1]!r}"
            else:
                fix = (f"put {parts[0]}.py (or the package {parts[0]}/) in the directory the gateway runs from, or "
                       "add its folder to PYTHONPATH")
            return ToolsModuleError(
                f"TOOLS_MODULE={module_name} cannot be imported: no module named {error.name!r} on the import path "
                f"or in the working directory {where}", fix)
        return ToolsModuleError(
            f"TOOLS_MODULE={module_name} cannot be imported: it imports {error.name!r}, which is not installed",
            "install the package that provides it in the gateway's Python environment")
    if isinstance(error, SyntaxError):  # its str() carries the location already
        message = escape_controls(str(error.msg))[:300]
        location = f"{os.path.basename(error.filename or '?')}, line {error.lineno}"
    else:
        frames = traceback.extract_tb(error.__traceback__)
        location = f"{os.path.basename(frames[-1].filename)}, line {frames[-1].lineno}" if frames else "?"
    return ToolsModuleError(
        f"TOOLS_MODULE={module_name} cannot be imported: {type(error).__name__}: {message} ({location})",
        f"fix the module (`python -c 'import {module_name}'` in {where or 'its directory'} shows the traceback)")


def import_tools_module(module_name: str) -> Any:
    """``importlib.import_module(module_name)``, with the working directory as a last resort.

    The ``gateway`` command does not put the working directory on the import path (``python -m`` does), so a
    ``my_tools.py`` beside the operator was not found. It is added for this one import only and at the end of the
    path: a file there never shadows an installed module (a stray ``logging.py`` stays harmless), and modules
    imported later do not see it. Called at start-up (and by doctor), before any thread imports anything.
    Raises :class:`ToolsModuleError`.
    """
    if not _MODULE_NAME.fullmatch(module_name):
        raise ToolsModuleError(f"TOOLS_MODULE must be a module name such as my_tools or package.tools, got "
                               f"{module_name[:100]!r}", "write the module's name, not a file path (no .py)")
    where = _working_directory()
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if not where or error.name not in _own_names(module_name):
            raise _import_error(module_name, error, where) from error
    except Exception as error:  # the module's own error (SyntaxError included): anything it raises
        raise _import_error(module_name, error, where) from error
    added = where not in sys.path
    if added:
        sys.path.append(where)
    importlib.invalidate_caches()  # a file created since the last look-up in that directory
    try:
        return importlib.import_module(module_name)
    except Exception as error:
        raise _import_error(module_name, error, where) from error
    finally:
        if added:
            # The last entry equal to it: ours, even if the module put its own copy in front.
            with contextlib.suppress(ValueError):
                del sys.path[len(sys.path) - 1 - sys.path[::-1].index(where)]


def load_tools_module(module_name: str) -> list[Tool]:
    """The tools of a user module: its ``TOOLS`` list if it has one, else its public functions."""
    module = import_tools_module(module_name)
    functions = getattr(module, "TOOLS", None)
    if functions is None:
        functions = [
            value
            for key, value in vars(module).items()
            if inspect.isfunction(value) and not key.startswith("_") and value.__module__ == module.__name__
        ]
    return [tool_from_function(f) for f in functions]


def tools_module_problem(module_name: str) -> ToolsModuleError | None:
    """None when ``TOOLS_MODULE`` loads (or is unset); else what is wrong and the fix (``gateway serve`` refuses to
    start with it, ``gateway doctor`` reports it)."""
    if not module_name:
        return None
    try:
        load_tools_module(module_name)
    except ToolsModuleError as error:
        return error
    except Exception as error:  # noqa: BLE001 - a function whose parameters cannot be described to the model
        from gateway.observe.logsafe import escape_controls

        return ToolsModuleError(f"TOOLS_MODULE={module_name}: its tools cannot be described to the model: "
                                f"{type(error).__name__}: {escape_controls(str(error))[:300]}",
                                "give every tool function typed parameters (no *args/**kwargs)")
    return None


class ToolRegistry:
    """The tools of a session: their ``session.update`` definitions, and running user tools safely.

    Sync tools run on a pool of their own (``max_threads``), never on the loop's default pool that the
    Twilio REST client and the SQLite store use: a thread cannot be killed, so a tool that hangs keeps its
    thread, and a full pool answers "busy" at once instead of queueing calls behind it. The pool is shared
    fairly: one call holds at most ``max_threads_per_call`` threads (hung ones included), so a call whose
    tools hang cannot take the threads every other call needs.
    """

    def __init__(self, tools: list[Tool], timeout_s: float = 10.0, max_threads: int = 16,
                 max_threads_per_call: int = 1) -> None:
        self.timeout_s = timeout_s
        self._max_threads = max_threads
        self._max_threads_per_call = max_threads_per_call
        self._executor: ThreadPoolExecutor | None = None
        self._threads_busy = 0
        self._threads_by_call: dict[str, int] = {}
        self._lock = threading.Lock()
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            if tool.name in self._tools:
                raise ValueError(f"two tools are named {tool.name!r}")
            self._tools[tool.name] = tool

    def definitions(self) -> list[dict[str, Any]]:
        return [tool.definition() for tool in self._tools.values()]

    def has(self, name: str) -> bool:
        return name in self._tools

    def is_builtin(self, name: str) -> bool:
        tool = self._tools.get(name)
        return tool is not None and tool.function is None

    async def run(self, name: str, arguments: str, context: ToolContext) -> str:
        """Run a user tool; always returns the JSON text to send back as ``function_call_output``."""
        tool = self._tools.get(name)
        if tool is None or tool.function is None or tool.arguments_model is None:
            return json.dumps({"error": f"there is no tool named {name!r}"})
        try:
            parsed = tool.arguments_model.model_validate_json(arguments or "{}")
        except pydantic.ValidationError as error:
            return json.dumps({"error": f"invalid arguments: {error.errors(include_url=False)}"}, default=str)
        kwargs = dict(parsed)
        if tool.wants_context:
            kwargs["context"] = context
        try:
            result = await self._call(tool.function, kwargs, context.call_sid)
        except TimeoutError:
            log.warning("tool %s timed out after %.1f s call_sid=%s", name, self.timeout_s, context.call_sid)
            return json.dumps({"error": f"the tool {name} did not answer within {self.timeout_s:g} s"})
        except _PoolFull:
            log.warning("tool %s refused: the tool threads are busy (or this call holds its share) call_sid=%s",
                        name, context.call_sid)
            return json.dumps({"error": f"the tool {name} is busy, try again later"})
        except Exception as error:  # a tool's bug must not end the call
            log.exception("tool %s failed call_sid=%s", name, context.call_sid)
            return json.dumps({"error": f"the tool {name} failed ({type(error).__name__})"})
        try:
            text = result if isinstance(result, str) else json.dumps(result, default=str)
        except (TypeError, ValueError):
            text = json.dumps({"result": str(result)})
        if len(text) > MAX_TOOL_OUTPUT_CHARS:
            # Still valid JSON for the model, and it knows it got only the start.
            text = json.dumps({"truncated": True, "start": text[: MAX_TOOL_OUTPUT_CHARS - 100]})
        return text

    async def _call(self, function: Callable[..., Any], kwargs: dict[str, Any], call_sid: str = "") -> Any:
        """Run ``function`` with the timeout; a task that ignores cancellation is abandoned, not awaited."""
        if inspect.iscoroutinefunction(function):
            task: asyncio.Future[Any] = asyncio.ensure_future(function(**kwargs))
        else:
            with self._lock:
                if (self._threads_busy >= self._max_threads
                        or self._threads_by_call.get(call_sid, 0) >= self._max_threads_per_call):
                    raise _PoolFull
                self._threads_busy += 1
                self._threads_by_call[call_sid] = self._threads_by_call.get(call_sid, 0) + 1
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._max_threads, thread_name_prefix="gateway-tool")
            task = asyncio.get_running_loop().run_in_executor(self._executor, self._in_thread, function, kwargs,
                                                              call_sid)
        try:
            done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
        except asyncio.CancelledError:
            task.cancel()  # the call ended: its tool does not outlive it
            raise
        if not done:
            task.cancel()
            raise TimeoutError
        return task.result()

    def _in_thread(self, function: Callable[..., Any], kwargs: dict[str, Any], call_sid: str) -> Any:
        # Counted free only when the function really returns: cancelling the future does not stop the thread.
        try:
            return function(**kwargs)
        finally:
            with self._lock:
                self._threads_busy -= 1
                held = self._threads_by_call.get(call_sid, 1) - 1
                if held:
                    self._threads_by_call[call_sid] = held
                else:
                    self._threads_by_call.pop(call_sid, None)


class _PoolFull(Exception):
    """Every tool thread is taken (by tools that hang)."""
