"""The PostgreSQL queue store: one queue shared by many nodes (see ``store``)."""
