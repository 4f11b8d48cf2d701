"""Delivery: one attempt of one queue entry along its route of relays, the circuit breakers and
quotas that guard the relays, and the bounce that follows a permanent failure."""
