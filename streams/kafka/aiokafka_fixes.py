"""Work-arounds for aiokafka bugs met by the serving process (uvloop); each cites its issue."""

from __future__ import annotations

from typing import Any

from aiokafka.conn import AIOKafkaConnection, CloseReason
from aiokafka.errors import KafkaConnectionError

_FIXED = "_segments_closed_transport_fix"


def closed_transports_raise_connection_errors() -> None:
    """aio-libs/aiokafka#1038: a request written to a connection whose transport has just
    closed raises RuntimeError on uvloop (asyncio ignores the write, and the request fails
    a moment later with KafkaConnectionError). aiokafka catches only OSError there, so the
    RuntimeError escaped its retry loops: in the fault suite the cache sink's commit raised
    it and `segments serve` stopped, or a consumer's background task died with it and the
    sink waited for a coordinator for ever. The write now fails as a broken connection does
    (the connection is closed, KafkaConnectionError raised), which aiokafka retries.
    Idempotent."""
    if getattr(AIOKafkaConnection.send, _FIXED, False):
        return
    original = AIOKafkaConnection.send

    def send(self: AIOKafkaConnection, request: Any, expect_response: bool = True) -> Any:
        try:
            return original(self, request, expect_response)
        except RuntimeError as error:
            writer = self._writer
            if writer is None or not writer.transport.is_closing():
                raise
            self.close(reason=CloseReason.CONNECTION_BROKEN, exc=error)
            raise KafkaConnectionError(
                f"Connection at {self._host}:{self._port} broken: {error}"
            ) from error

    setattr(send, _FIXED, True)
    AIOKafkaConnection.send = send
