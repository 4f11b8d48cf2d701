"""The daemon: the composition root that wires intake, the queue store, delivery and the servers
together, and the loops that run them."""
