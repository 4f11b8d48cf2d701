"""Administration: the operations behind ``mqd queue``, ``mqd failed`` and ``mqd status``, the
control channel to a running daemon, and their renderings for a terminal."""
