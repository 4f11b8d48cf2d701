"""Named exit codes, from BSD's sysexits.h so that cron, PHP and init systems understand them.

One table for every command, the sendmail path's included: that path runs once per message, so
this is a plain class of ints (an ``IntEnum`` would cost it the import of ``enum``, a few ms)
and the module imports nothing.
"""

__all__ = ["ExitCode"]


class ExitCode:
    OK = 0
    #: Something went wrong that has no more specific code.
    FAILURE = 1
    #: The command line was wrong (an unknown option, a missing argument or file, a spool that
    #: is not configured).
    USAGE = 64
    #: The input message was unusable (no recipients, not a message).
    DATAERR = 65
    #: An unexpected internal error (a bug in mqd or a plugin); the traceback is printed.
    SOFTWARE = 70
    #: A file or directory cannot be created (the spool or the queue is not writable).
    CANTCREAT = 73
    #: A file could not be read or written: a damaged or unreadable event store (mqd history).
    IOERR = 74
    #: Try again later: the queue directory is in use by another mqd, or the spool cannot be
    #: written for a reason that may pass (sendmail).
    TEMPFAIL = 75
    #: Not allowed: the sender is not on the spool's allow-list (mqd send, mqd sendmail), as
    #: Postfix's sendmail exits for a user not allowed to submit mail.
    NOPERM = 77
    #: The configuration is invalid.
    CONFIG = 78

    @classmethod
    def items(cls) -> "list[tuple[str, int]]":
        """Every code as (name, value), in the order above."""
        return [(name, value) for name, value in vars(cls).items() if name.isupper()]
