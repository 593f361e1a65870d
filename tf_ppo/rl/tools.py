"""Tools a model calls during an episode: plain Python functions, described by their type hints and docstrings.

A tool is a function with a type hint on every parameter and a docstring (`def calculator(expression: str)
-> str`). tf_ppo's own tiny models call one in a simple tag format, a Python call inside `<call>` tags, and
read its result inside `<result>` tags:

    the farm has 12 rows of 34 trees . <call>calculator("12 * 34")</call><result>408</result> #### 408

The call's arguments are Python literals only, read with `ast.literal_eval` (never `eval`). A tool that
raises, or runs past its timeout, answers with an error result instead: the episode goes on, and the error
is counted. Tools may be `async def`; `run_calls` then runs the calls of a batch concurrently.
"""

import ast
import dataclasses
import fractions
import functools
import inspect
import re
import typing

from tf_ppo.rl.concurrency import run_concurrently

CALL_OPEN, CALL_CLOSE = "<call>", "</call>"
RESULT_OPEN, RESULT_CLOSE = "<result>", "</result>"
_CALL = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.S)


class ToolError(TypeError):
    """A tool that cannot be offered to the model (no type hints, no docstring, a duplicate name)."""


@dataclasses.dataclass(frozen=True)
class Tool:
    """One callable tool: its name, the description the docs and prompts show, and the function."""

    name: str
    description: str  # the docstring's first line
    parameters: dict  # name -> type hint
    function: typing.Callable


def as_tool(function):
    """A `Tool` of a plain function; `ToolError` names what is missing.

    Example:
    >>> def add(a: int, b: int) -> int:
    ...     '''The sum of two integers.'''
    ...     return a + b
    >>> tool = as_tool(add)
    >>> tool.name, tool.description, tool.parameters
    ('add', 'The sum of two integers.', {'a': <class 'int'>, 'b': <class 'int'>})
    """
    name = getattr(function, "__name__", repr(function))
    if not callable(function):
        raise ToolError(f"a tool must be a function, got {type(function).__name__}")
    hints = typing.get_type_hints(function)
    parameters = {}
    for parameter in inspect.signature(function).parameters.values():
        if parameter.name not in hints:
            raise ToolError(f"tool {name!r} has no type hint for its parameter {parameter.name!r}: the model is "
                            f"told each parameter's type, so every parameter needs one")
        parameters[parameter.name] = hints[parameter.name]
    doc = inspect.getdoc(function)
    if not doc:
        raise ToolError(f"tool {name!r} has no docstring: its first line is what the model is told the tool does")
    return Tool(name, doc.splitlines()[0], parameters, function)


def as_tools(functions):
    """`{name: Tool}` of a list of functions; `ToolError` on a bad one or a repeated name.

    Example:
    >>> sorted(as_tools([calculator]))
    ['calculator']
    """
    tools = {}
    for function in functions:
        tool = as_tool(function)
        if tool.name in tools:
            raise ToolError(f"two tools are named {tool.name!r}")
        tools[tool.name] = tool
    return tools


@dataclasses.dataclass(frozen=True)
class Call:
    """A parsed tool call: the tool's name and its arguments (Python values)."""

    name: str
    args: tuple
    kwargs: dict


def parse_call(text):
    """The first `<call>name(args)</call>` of a model's turn as a `Call`, None when it has none.

    A call that is not a Python call of literals raises `ValueError` with what is wrong; the episode
    answers it with an error result.

    Example:
    >>> parse_call('12 rows of 34 . <call>calculator("12 * 34")</call>')
    Call(name='calculator', args=('12 * 34',), kwargs={})
    >>> parse_call("no call here") is None
    True
    """
    match = _CALL.search(text)
    if match is None:
        return None
    source = match.group(1).strip()
    try:
        node = ast.parse(source, mode="eval").body
    except SyntaxError as error:
        raise ValueError(f"the call {source!r} is not Python call syntax ({error.msg})") from None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"the call {source!r} must be name(arguments)")
    try:
        args = tuple(ast.literal_eval(arg) for arg in node.args)
        kwargs = {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords}
    except ValueError:
        raise ValueError(f"the arguments of {source!r} must be literals (numbers, strings, lists)") from None
    return Call(node.func.id, args, kwargs)


@dataclasses.dataclass(frozen=True)
class Result:
    """A tool's answer: the text the model reads, and whether it is an error."""

    text: str
    error: bool = False

    def observation(self):
        """The result as the model reads it, in result tags."""
        return f"{RESULT_OPEN}{self.text}{RESULT_CLOSE}"


def run_calls(tools, calls, timeout):
    """Run each call (None: no call) with its tool; one `Result` (or None) per call, in order.

    Synchronous tools run in threads and `async def` tools on one event loop, all at once, so a batch of
    episodes waits for its slowest call, not for their sum. A call that raises, names no tool, or runs
    past `timeout` seconds gets an error `Result`; nothing here raises.

    Example:
    >>> tools = as_tools([calculator])
    >>> [r.text for r in run_calls(tools, [Call("calculator", ("6 * 7",), {}), Call("nope", (), {})], 1.0)]
    ['42', "error: no tool named 'nope' (tools: calculator)"]
    """
    return [_result(tools, call, outcome) for call, outcome in
            zip(calls, run_concurrently([_bound(tools, call) for call in calls], timeout))]


def _bound(tools, call):
    """The call as a zero-argument function (one that returns nothing when there is nothing to call)."""
    if call is None or isinstance(call, Exception) or call.name not in tools:
        return lambda: None
    return functools.partial(tools[call.name].function, *call.args, **call.kwargs)


def _result(tools, call, outcome):
    if call is None:
        return None
    if isinstance(call, Exception):  # the turn's call could not be parsed
        return Result(f"error: {call}", error=True)
    if call.name not in tools:
        return Result(f"error: no tool named {call.name!r} (tools: {', '.join(sorted(tools))})", error=True)
    if isinstance(outcome, TimeoutError):
        return Result(f"error: {call.name} {outcome}", error=True)
    if isinstance(outcome, Exception):  # a tool's failure is the model's observation, never the run's end
        return Result(f"error: {type(outcome).__name__}: {outcome}", error=True)
    return Result(str(outcome))


_NUMBER = re.compile(r"\s*(\d+)")
_OPERATOR = re.compile(r"\s*([-+*/()])")


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression of integers with + - * / and parentheses.

    A parser of its own, never `eval`. It computes with exact fractions: a whole result is written as an
    integer (`8 / 2 * 3` is `12`), any other as a decimal (`7 / 2` is `3.5`). Anything else raises `ValueError`.

    Example:
    >>> calculator("12 * (30 + 4)")
    '408'
    >>> calculator("7 / 2")
    '3.5'
    """
    tokens = _tokens(expression)
    value, rest = _sum(tokens)
    if rest:
        raise ValueError(f"unexpected {str(rest[0])!r} in {expression!r}")
    return str(value.numerator) if value.denominator == 1 else str(float(value))


def _tokens(expression):
    tokens, position = [], 0
    while position < len(expression):
        if expression[position:].strip() == "":
            break
        match = _NUMBER.match(expression, position) or _OPERATOR.match(expression, position)
        if match is None:
            raise ValueError(f"{expression!r} holds {expression[position:].strip()[0]!r}: only integers, "
                             f"+ - * / and parentheses are allowed")
        token = match.group(1)
        tokens.append(fractions.Fraction(int(token)) if token.isdigit() else token)
        position = match.end()
    if not tokens:
        raise ValueError("the expression is empty")
    return tokens


def _sum(tokens):
    value, tokens = _product(tokens)
    while tokens and tokens[0] in ("+", "-"):
        operator, (right, tokens) = tokens[0], _product(tokens[1:])
        value = value + right if operator == "+" else value - right
    return value, tokens


def _product(tokens):
    value, tokens = _factor(tokens)
    while tokens and tokens[0] in ("*", "/"):
        operator, (right, tokens) = tokens[0], _factor(tokens[1:])
        if operator == "/" and right == 0:
            raise ZeroDivisionError("division by zero")
        value = value * right if operator == "*" else value / right
    return value, tokens


def _factor(tokens):
    if not tokens:
        raise ValueError("the expression ends too early")
    token = tokens[0]
    if token == "-":
        value, rest = _factor(tokens[1:])
        return -value, rest
    if token == "(":
        value, rest = _sum(tokens[1:])
        if not rest or rest[0] != ")":
            raise ValueError("a parenthesis is not closed")
        return value, rest[1:]
    if isinstance(token, fractions.Fraction):
        return token, tokens[1:]
    raise ValueError(f"unexpected {token!r}")
