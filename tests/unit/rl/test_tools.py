"""Tools: specs from type hints, the tag format's parser, errors and timeouts as results, the calculator."""

import asyncio
import fractions
import random
import time

import pytest

from tf_ppo.rl.tools import Call, ToolError, as_tool, as_tools, calculator, parse_call, run_calls


def add(a: int, b: int) -> int:
    """The sum of two integers."""
    return a + b


def test_a_tool_needs_type_hints_and_a_docstring_and_a_name_of_its_own():
    def untyped(a, b: int):
        """Adds."""
    with pytest.raises(ToolError, match="tool 'untyped' has no type hint for its parameter 'a'"):
        as_tool(untyped)

    def undocumented(a: int):
        return a
    with pytest.raises(ToolError, match="tool 'undocumented' has no docstring"):
        as_tool(undocumented)
    with pytest.raises(ToolError, match="two tools are named 'add'"):
        as_tools([add, add])
    with pytest.raises(ToolError, match="a tool must be a function, got int"):
        as_tool(3)
    assert as_tool(add).parameters == {"a": int, "b": int}


def test_parse_call_reads_the_first_call_of_literals_only():
    assert parse_call('x <call>add(2, b=3)</call> y <call>add(9, 9)</call>') == Call("add", (2,), {"b": 3})
    assert parse_call("<call>\n calculator('1 + 1') \n</call>") == Call("calculator", ("1 + 1",), {})
    assert parse_call("no call, and <call>unclosed") is None
    with pytest.raises(ValueError, match="is not Python call syntax"):
        parse_call("<call>add(2,</call>")
    with pytest.raises(ValueError, match="must be name\\(arguments\\)"):
        parse_call("<call>os.system('ls')</call>")
    with pytest.raises(ValueError, match="must be literals"):
        parse_call("<call>add(__import__('os'), 1)</call>")


def test_errors_unknown_tools_and_unparsable_calls_become_error_results_in_order():
    def broken(x: int) -> int:
        """Always fails."""
        raise KeyError("missing")

    tools = as_tools([add, broken])
    results = run_calls(tools, [Call("add", (1, 2), {}), None, Call("broken", (1,), {}), Call("mul", (), {}),
                                ValueError("the call 'add(' is not Python call syntax")], timeout=2.0)
    assert results[0].text == "3" and not results[0].error
    assert results[1] is None
    assert results[2].error and results[2].text == "error: KeyError: 'missing'"
    assert results[3].error and results[3].text == "error: no tool named 'mul' (tools: add, broken)"
    assert results[4].error and results[4].text == "error: the call 'add(' is not Python call syntax"
    assert results[0].observation() == "<result>3</result>"


def hang(seconds: float) -> str:
    """Sleeps in a thread."""
    time.sleep(seconds)
    return "late"


async def slow(seconds: float) -> str:
    """Sleeps on the loop, without blocking it."""
    await asyncio.sleep(seconds)
    return "late"


# A late answer from the hung thread must find its loop closed quietly, not raise in the thread.
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_hung_tool_times_out_while_the_others_answer():
    started = time.perf_counter()
    results = run_calls(as_tools([hang, slow, add]), [Call("hang", (1.0,), {}), Call("slow", (30.0,), {}),
                                                      Call("add", (1, 1), {})], timeout=0.3)
    assert time.perf_counter() - started < 0.9
    assert [r.text for r in results] == ["error: hang took longer than 0.3 s", "error: slow took longer than 0.3 s",
                                         "2"]
    time.sleep(1.0)  # the hung call ends now, after its loop has closed


def test_calls_of_a_batch_run_concurrently_sync_and_async():
    calls = [Call("hang", (0.4,), {}), Call("slow", (0.4,), {})] * 4
    started = time.perf_counter()
    assert [r.text for r in run_calls(as_tools([hang, slow]), calls, timeout=5.0)] == ["late"] * 8
    assert time.perf_counter() - started < 1.6  # 8 calls of 0.4 s: one after the other would take 3.2 s


def random_expression(rng, depth=0):
    if depth > 2 or rng.random() < 0.3:
        return str(rng.randint(0, 999))
    left, right = random_expression(rng, depth + 1), random_expression(rng, depth + 1)
    expression = f"{left} {rng.choice('+-*/')} {right}"
    return f"({expression})" if rng.random() < 0.5 else expression


def test_calculator_agrees_with_exact_rational_arithmetic_on_random_expressions():
    rng = random.Random(0)
    checked = 0
    for _ in range(500):
        expression = random_expression(rng)
        try:  # the reference: Python's own parser over exact fractions (a test may use eval; the tool never does)
            exact = eval(_as_fractions(expression), {"F": fractions.Fraction}, {})
        except ZeroDivisionError:
            with pytest.raises(ZeroDivisionError):
                calculator(expression)
            continue
        got = calculator(expression)
        assert got == (str(exact.numerator) if exact.denominator == 1 else str(float(exact))), expression
        checked += 1
    assert checked > 400


def _as_fractions(expression):
    return " ".join(f"F({token})" if token.isdigit() else token
                    for token in expression.replace("(", " ( ").replace(")", " ) ").split())


@pytest.mark.parametrize("expression, message", [
    ("__import__('os')", "only integers"), ("2 ** 3", "unexpected"), ("1e3", "only integers"),
    ("(1 + 2", "not closed"), ("", "empty"), ("3 +", "ends too early"), ("1 2", "unexpected '2'")])
def test_calculator_refuses_anything_but_integer_arithmetic(expression, message):
    with pytest.raises(ValueError, match=message):
        calculator(expression)
