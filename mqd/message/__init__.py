"""The message leaf: headers, the envelope, relay replies and their classification, building
messages. It imports nothing of mqd above it (only ``mqd.errors``)."""
