"""Signals that end a run cleanly: SIGTERM (a cloud preemption) checkpoints after the step in flight."""

import contextlib
import signal
import threading

from tqdm.auto import tqdm


@contextlib.contextmanager
def sigterm_stops(on_stop):
    """While inside, SIGTERM (a cloud preemption) calls `on_stop()` instead of killing the process.

    The loop then checkpoints after the step in flight and returns. Signal
    handlers can only be installed from the main thread; elsewhere this does nothing.

    Example:
        with sigterm_stops(lambda: setattr(loop, "stop_training", True)):
            ...
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        on_stop()
        tqdm.write("SIGTERM: saving a checkpoint after the step in flight, then stopping")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
