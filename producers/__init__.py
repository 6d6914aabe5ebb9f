"""Emitting tickbus events: the Python emitters (threaded and asyncio); other languages live beside them."""

from producers.emitter import AsyncEmitter, Emitter, EmitterSettings

__all__ = ["AsyncEmitter", "Emitter", "EmitterSettings"]
