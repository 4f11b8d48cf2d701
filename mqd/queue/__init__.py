"""The durable queue: entry state, the retry schedule and the store behind an interface."""
