"""The SIGTERM/SIGINT handler takes no lock. It runs on the main thread between two bytecodes, possibly
while that thread is inside Event.wait() holding the Event's lock; Event.set() there would wait for itself
forever (a CI run once saw a daemon ignore SIGTERM until SIGKILL). End to end, every daemon test stops its
daemon with SIGTERM and asserts exit 0 (tests/daemon_harness.stop_daemon)."""
from __future__ import annotations

import signal
import threading

from device.daemon import Daemon


def test_term_handler_returns_while_the_stop_events_lock_is_held():
    d = Daemon(None, env={})
    done = threading.Event()

    def main_thread_inside_wait():
        with d._stop._cond:                      # what Event.wait() holds around its checks
            d._on_term(signal.SIGTERM, None)     # the handler, as Python would run it right here
        done.set()

    t = threading.Thread(target=main_thread_inside_wait, daemon=True)
    t.start()
    t.join(3.0)
    assert done.is_set(), "the handler blocked on the stop event's lock"
    assert not d._stop.is_set()                  # nothing set in the handler itself...
    assert d._stopping() and d._stop.is_set()    # ...the loop turns the flag into the event
