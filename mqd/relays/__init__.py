"""Relays: the contract (``base``) and the built-in ones (smtp, outbox, memory)."""
