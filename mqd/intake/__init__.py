"""Intake: how a message gets into the queue. Sources (the spool directories today), the claim,
the sender policy and the route, then one call into the queue store."""
