"""Tools: Python functions a model may call, with a name, a description and a parameter schema.

Declare one with the decorator, which reads the schema from type hints and the docstring::

    @tool
    def get_weather(city: str, unit: Literal["C", "F"] = "C") -> str:
        \"\"\"The current weather in a city.

        Args:
            city: The city's name, e.g. "Paris".
            unit: Temperature unit.
        \"\"\"

or ``@tool(name="weather", description="...")``, or build one explicitly with
``Tool(name, description, parameters, fn)``. Functions may be sync (run in a worker thread, off
the event loop) or async.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import re
import typing
from typing import Any, Callable, Optional, Union

import orjson

from .schema import UNIONS, check_value, nullable, parse_docstring, schema_of

log = logging.getLogger("helios_raw.agent")

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Tool:
    """A function the model may call.

    ``parameters`` is the JSON schema (``type: object``) of its keyword arguments; ``fn`` is
    called with the model's arguments as keyword arguments. Calling the Tool itself calls ``fn``.
    """

    def __init__(self, name: str, description: str, parameters: Optional[dict], fn: Callable,
                 *, converters: Optional[dict[str, Callable[[Any], Any]]] = None) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"tool name {name!r} must be 1-64 letters, digits, '_' or '-'")
        if not callable(fn):
            raise TypeError(f"tool {name}: fn must be callable, not {type(fn).__name__}")
        parameters = {"type": "object", "properties": {}} if parameters is None else parameters
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise ValueError(f"tool {name}: parameters must be a JSON schema of type 'object'")
        self.name = name
        self.description = description or ""
        self.parameters = parameters
        self.fn = fn
        self._converters = converters or {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    def definition(self) -> dict:
        """The entry for this tool in a chat request's ``tools``."""
        function: dict = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}

    async def invoke(self, arguments: str) -> str:
        """Run the tool on the model's ``arguments`` (a JSON object as text) and return the text
        the model will read. Never raises: bad arguments and exceptions become an error text."""
        try:
            values = orjson.loads(arguments) if arguments and arguments.strip() else {}
        except orjson.JSONDecodeError as exc:
            return f"Error: the arguments to {self.name} are not valid JSON ({exc}); send a JSON object."
        if not isinstance(values, dict):
            return f"Error: the arguments to {self.name} must be a JSON object, not {type(values).__name__}."
        problem = check_value(self.parameters, values)
        if problem:
            return f"Error: bad arguments to {self.name}: {problem}."
        try:
            for key, convert in self._converters.items():
                if key in values and values[key] is not None:
                    values[key] = convert(values[key])
            if inspect.iscoroutinefunction(self.fn):
                result = await self.fn(**values)
            else:
                result = await asyncio.to_thread(self.fn, **values)
                if inspect.isawaitable(result):
                    result = await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("tool %s raised %s: %s", self.name, type(exc).__name__, exc)
            return f"Error: {self.name} failed: {type(exc).__name__}: {exc}"
        return result_text(result)


def result_text(result: Any) -> str:
    """What the model reads for a tool's return value: strings as they are, anything else as JSON."""
    if isinstance(result, str):
        return result
    if isinstance(result, enum.Enum):
        result = result.value
    try:
        return orjson.dumps(result, default=str).decode()
    except TypeError:
        return str(result)


def tool(fn: Optional[Callable] = None, *, name: Optional[str] = None,
         description: Optional[str] = None) -> Union[Tool, Callable[[Callable], Tool]]:
    """Turn a function into a :class:`Tool`: ``@tool`` or ``@tool(name=..., description=...)``.

    The name defaults to the function's name, the description to its docstring's first
    paragraph; the parameter schema comes from the signature's type hints and defaults
    (a parameter with a default is not required) and the docstring's parameter descriptions.
    """
    def make(function: Callable) -> Tool:
        return _from_function(function, name, description)

    return make(fn) if fn is not None else make


def _from_function(fn: Callable, name: Optional[str], description: Optional[str]) -> Tool:
    tool_name = name or getattr(fn, "__name__", None)
    if not tool_name:
        raise ValueError(f"cannot name a tool for {fn!r}: pass name=...")
    summary, documented = parse_docstring(inspect.getdoc(fn))
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise TypeError(f"tool {tool_name}: cannot read its type hints: {exc}") from None
    properties: dict[str, dict] = {}
    required: list[str] = []
    converters: dict[str, Callable[[Any], Any]] = {}
    open_ended = False
    for param in inspect.signature(fn).parameters.values():
        if param.kind is param.VAR_KEYWORD:
            open_ended = True
            continue
        if param.kind is param.VAR_POSITIONAL:
            continue
        if param.kind is param.POSITIONAL_ONLY:
            raise TypeError(f"tool {tool_name}: parameter {param.name} is positional-only; "
                            "tools are called with keyword arguments")
        hint = hints.get(param.name, inspect.Parameter.empty)
        try:
            schema = dict(schema_of(hint))
        except TypeError as exc:
            raise TypeError(f"tool {tool_name}: parameter {param.name}: {exc}; "
                            "build the Tool with an explicit parameters schema") from None
        if param.name in documented and documented[param.name] and "description" not in schema:
            schema["description"] = documented[param.name]
        if param.default is None and schema and check_value(schema, None):
            schema = nullable(schema)
        if param.default is param.empty:
            required.append(param.name)
        elif _is_json(param.default):
            schema["default"] = param.default.value if isinstance(param.default, enum.Enum) else param.default
        enum_type = _enum_type(hint)
        if enum_type is not None:
            converters[param.name] = enum_type
        properties[param.name] = schema
    parameters: dict = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    if not open_ended:
        parameters["additionalProperties"] = False
    return Tool(tool_name, description if description is not None else summary, parameters, fn,
                converters=converters)


def _enum_type(hint: Any) -> Optional[type]:
    """The Enum class behind ``hint`` (also inside Optional/Annotated), to convert values to."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    members = [hint]
    if typing.get_origin(hint) in UNIONS:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(members) == 1 and isinstance(members[0], type) and issubclass(members[0], enum.Enum):
        return members[0]
    return None


def _is_json(value: Any) -> bool:
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True
