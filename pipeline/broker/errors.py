"""Errors the broker raises beyond Dramatiq's own."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dramatiq.errors import BrokerError

if TYPE_CHECKING:
    from dramatiq.message import Message


class BatchPublishError(BrokerError):
    """Some messages of a ``broker.batch()`` block were not stored.

    ``failed`` lists each such message with the error it got, so a caller
    can re-send exactly those.
    """

    def __init__(self, failed: list[tuple[Message, BaseException]]) -> None:
        self.failed = failed
        first = failed[0][1]
        super().__init__(f"{len(failed)} message(s) not stored by JetStream; first error: {first!r}")


class DeadLetterError(BrokerError):
    """Raised by ``join(fail_fast=True)`` for a message another process dead-lettered."""

    def __init__(self, message_id: str, reason: str) -> None:
        self.message_id = message_id
        self.reason = reason
        super().__init__(f"message {message_id} was dead-lettered: {reason}")
