"""The producer side: ``mqd send``, ``mqd sendmail`` and the launcher, which write messages into
a spool. The sendmail path runs once per message, so it imports as little as it can."""
