"""Typed failures. Each carries a verdict reason code; `detail` is for logs and must hold no PII."""
from __future__ import annotations


class KycError(Exception):
    reason = "internal_error"

    def __init__(self, reason: str | None = None, detail: str = ""):
        if reason:
            self.reason = reason
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)


class CardError(KycError):
    reason = "card_read_failed"


class CameraError(KycError):
    reason = "camera_lost"


class ModelError(KycError):
    reason = "model_unavailable"
