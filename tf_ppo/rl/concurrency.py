"""Run the calls of a batch of episodes at once: `async def` ones on one event loop, the others in threads.

A batch of episodes waits for its slowest tool call or environment step, not for their sum. A call that
runs past its timeout is abandoned: a synchronous one keeps its daemon thread until it returns, and never
blocks the process's exit.
"""

import asyncio
import concurrent.futures
import inspect
import threading


def run_concurrently(functions, timeout=None):
    """Call each zero-argument function; per function its return value, or the exception it raised.

    An `async def` function (or a `functools.partial` of one) is awaited on an event loop; any other runs
    in a daemon thread. With `timeout` (seconds), a call still running then gets `TimeoutError`. Nothing
    here raises: the caller decides what an exception means.

    Example:
    >>> import functools
    >>> run_concurrently([functools.partial(pow, 2, 10), lambda: 1 / 0])
    [1024, ZeroDivisionError('division by zero')]
    """
    async def all_calls():
        return await asyncio.gather(*(_outcome(function, timeout) for function in functions))

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread: the usual case
        return asyncio.run(all_calls())
    with concurrent.futures.ThreadPoolExecutor(1) as thread:  # a notebook's thread already runs a loop
        return thread.submit(asyncio.run, all_calls()).result()


async def _outcome(function, timeout):
    try:
        running = function() if inspect.iscoroutinefunction(function) else _in_daemon_thread(function)
        return await asyncio.wait_for(running, timeout)
    except asyncio.TimeoutError:
        return TimeoutError(f"took longer than {timeout:g} s")
    except Exception as error:  # handed to the caller, which knows what it means
        return error


def _in_daemon_thread(function):
    """A future of `function()`, run in a daemon thread."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def run():
        try:
            value, error = function(), None
        except Exception as raised:  # handed to the awaiting coroutine
            value, error = None, raised
        try:
            loop.call_soon_threadsafe(_settle, future, value, error)
        except RuntimeError:  # the loop has closed: the call timed out long ago, and nobody waits for it
            pass

    threading.Thread(target=run, daemon=True, name=f"call-{getattr(function, '__name__', 'function')}").start()
    return future


def _settle(future, value, error):
    if not future.done():  # else it timed out and was cancelled meanwhile
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
