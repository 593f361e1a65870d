"""Signals that end a run cleanly: SIGTERM (a cloud preemption) and Ctrl-C checkpoint after the step in flight."""

import contextlib
import signal
import threading

from tqdm.auto import tqdm

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
NOTICES = {
    signal.SIGTERM: "SIGTERM: saving a checkpoint after the step in flight, then stopping",
    signal.SIGINT: "Ctrl-C: saving a checkpoint after the step in flight, then stopping "
                   "(Ctrl-C again quits at once, without it)",
}


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (or SIGTERM) after saving its checkpoint; the message says where, and how to resume.

    A `KeyboardInterrupt`, so that `except Exception` does not swallow the
    Ctrl-C that a caller (the CLI, `pipeline`) turns into this.

    Example:
        raise Interrupted("interrupted at update 3/10; resume with: tf-ppo train --resume runs/x")
    """

    def __init__(self, message, signal_name="SIGINT"):
        super().__init__(message)
        self.signal_name = signal_name


@contextlib.contextmanager
def signals_stop(on_stop):
    """While inside, SIGTERM and the first Ctrl-C (SIGINT) call `on_stop(name)` instead of ending the process.

    `name` is "SIGTERM" or "SIGINT". The loop then checkpoints after the step in
    flight and returns. A second Ctrl-C gets the handler that was there before
    (Python's raises `KeyboardInterrupt` at once; in a notebook, the kernel's), so
    a user who cannot wait for the step still can quit. A signal the process
    ignores (a background job's SIGINT) stays ignored. Signal handlers can only
    be installed from the main thread (where a notebook kernel runs its cells
    too); elsewhere this does nothing.

    Example:
        with signals_stop(lambda name: setattr(loop, "stopped_by", name)):
            ...
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # None: a handler set outside Python, which could not be put back, so it is left alone.
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    caught = [signum for signum, handler in previous.items() if handler not in (signal.SIG_IGN, None)]

    def handler(signum, frame):
        if signum == signal.SIGINT:
            signal.signal(signum, previous[signum])  # the next Ctrl-C is not deferred
        on_stop(signal.Signals(signum).name)
        tqdm.write(NOTICES[signum])

    for signum in caught:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum in caught:
            signal.signal(signum, previous[signum])
