"""Relays: the contract (``base``) and the built-in ones (smtp, outbox, memory)."""

from .base import DeliveryResult, Outcome, Relay, Reply

__all__ = ["DeliveryResult", "Outcome", "Relay", "Reply"]
