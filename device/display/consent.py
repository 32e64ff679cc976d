"""Where a consent answer meets the session that waits for it (the daemon owns one ConsentBox).

Two channels feed it: the display's buttons (over the display socket) and the operator command
`cmd/consent` over MQTT. An answer counts only for the session that is waiting now (it is armed
when the session shows its notice), only if it names the notice version shown, and only once.
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("kyc_edge.consent")

ANSWERS = ("agree", "decline", "alternative")
CHANNELS = ("display", "operator")


class ConsentBox:
    def __init__(self, clock=time.monotonic):
        self._cv = threading.Condition()
        self._armed: tuple[str, str] | None = None      # (session_id, notice_version)
        self._answer: tuple[str, str] | None = None     # (answer, channel)
        self.clock = clock
        self.ignored = 0

    def arm(self, session_id: str, notice_version: str) -> None:
        with self._cv:
            self._armed, self._answer = (session_id, notice_version), None

    def offer(self, answer: str, channel: str, notice_version, session_id=None) -> bool:
        """An answer from a channel. True if it was taken by the waiting session."""
        with self._cv:
            ok = (self._armed is not None and self._answer is None and answer in ANSWERS and
                  channel in CHANNELS and notice_version == self._armed[1] and
                  (session_id in (None, "") or session_id == self._armed[0]))
            if not ok:
                self.ignored += 1
                log.info("consent answer ignored (%s via %s: no session waiting, or another notice version)",
                         answer if answer in ANSWERS else "?", channel if channel in CHANNELS else "?")
                return False
            self._answer = (answer, channel)
            self._cv.notify_all()
            return True

    def wait(self, session_id: str, notice_version: str, timeout_s: float, poll=lambda: None):
        """The Session's `consent` callable: (answer, channel), or (None, None) on timeout."""
        with self._cv:
            if self._armed != (session_id, notice_version):
                self._armed, self._answer = (session_id, notice_version), None
        deadline = self.clock() + timeout_s
        try:
            while True:
                poll()
                with self._cv:
                    if self._answer is not None:
                        return self._answer
                    left = deadline - self.clock()
                    if left <= 0:
                        return None, None
                    self._cv.wait(min(0.2, left))
        finally:
            with self._cv:
                self._armed = None
