"""Named exit codes, from BSD's sysexits.h so that cron, PHP and init systems understand them."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitCode"]


class ExitCode(IntEnum):
    OK = 0
    #: Something went wrong that has no more specific code.
    FAILURE = 1
    #: The command line was wrong (an unknown option, a missing argument or file).
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
    #: The configuration is invalid.
    CONFIG = 78
