"""The file store: the queue as files in the queue directory."""
