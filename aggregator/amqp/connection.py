"""Connecting to RabbitMQ: a robust connection, retried with backoff while the broker is unreachable."""

import asyncio
import logging
from collections.abc import Callable

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustConnection
from yarl import URL

from aggregator.config import AmqpSettings

log = logging.getLogger(__name__)

CONNECT_ERRORS = (OSError, ConnectionError, aiormq.exceptions.AMQPConnectionError, asyncio.TimeoutError)


def describe(error: BaseException | None) -> str:
    """An exception as a log reason: its type and message (some AMQP errors carry no message)."""
    if error is None:
        return "no error"
    try:
        text = str(error)
    except Exception:  # some AMQP errors cannot describe themselves (a frame missing)
        text = ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def redacted(url: str) -> str:
    """The broker URL without its password, for logs."""
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else url


async def connect_with_retry(
    amqp: AmqpSettings, on_retry: Callable[[], None] | None = None
) -> AbstractRobustConnection:
    """Connect robustly, retrying with capped exponential backoff while the broker is unreachable."""
    delay = 0.5
    while True:
        try:
            return await aio_pika.connect_robust(
                amqp.url,
                reconnect_interval=1.0,
                timeout=10,
                client_properties={"connection_name": f"tickbus-aggregator {amqp.queue}"},
            )
        except CONNECT_ERRORS as error:
            log.error(
                "cannot reach RabbitMQ at %s (%s); retrying in %.1fs",
                redacted(amqp.url),
                error or type(error).__name__,
                delay,
            )
            if on_retry is not None:
                on_retry()
            await asyncio.sleep(delay)
            delay = min(delay * 2, amqp.reconnect_max_seconds)
