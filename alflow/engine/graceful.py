"""A worker told to stop (SIGTERM) keeps the oracle call it has in hand, if it ends soon.

Why: the reaper, `scancel` and Parsl's block cancel all end worker pools with SIGTERM
(SIGKILL follows only later, or never: Parsl's local provider sends SIGTERM alone). With
the default action a worker dies wherever it is — also in the instant between an oracle
call finishing and its result reaching the run directory (`durable.py`), and then the
resumed campaign pays for that call again. Measured: the chaos harness kills shortly
after a label was recorded, so its kills line up with the oracle's cadence, and 1 in 2-3
streaming trials repeated a call this way.

So while a label batch runs, SIGTERM only takes note: the call in progress may finish
and be written, no new call starts, and then the signal is delivered as it would have
been. A call that has not finished `GRACE_S` after the signal is cut off (`os._exit`,
which works while the main thread is inside C code such as an SCF): a hung oracle never
keeps a cancelled worker alive. What remains is a call that ends within microseconds of
that deadline — no longer tied to when the kill comes.
"""

from __future__ import annotations

import os
import signal
import threading

GRACE_S = 3.0  # below the reaper's 5 s between SIGTERM and SIGKILL (processes.GRACE_S)
EXIT_TERMINATED = 128 + signal.SIGTERM


class FinishCallBeforeStopping:
    """Context manager for a worker's main thread; elsewhere (threads of the in-process
    backend: only the main thread may handle signals) and where SIGTERM is ignored, it
    does nothing. It never returns a batch cut short: a stopped batch ends the process."""

    def __init__(self, grace_s: float | None = None):
        self.grace_s = GRACE_S if grace_s is None else grace_s
        self.stopping = threading.Event()
        self._previous = None
        self._installed = False
        self._deadline: threading.Timer | None = None

    def _note(self, signum, frame) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        self._deadline = threading.Timer(self.grace_s, os._exit, (EXIT_TERMINATED,))
        self._deadline.daemon = True
        self._deadline.start()

    def __enter__(self) -> FinishCallBeforeStopping:
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGTERM, self._note)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if not self._installed:
            return
        signal.signal(signal.SIGTERM, self._previous)
        if not self.stopping.is_set():
            return
        os.kill(os.getpid(), signal.SIGTERM)  # now, as it would have come
        self._deadline.join()  # a Python handler that returned: stop all the same
