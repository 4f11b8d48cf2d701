"""Named exit codes, from BSD's sysexits.h so that cron, PHP and init systems understand them."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitCode"]


class ExitCode(IntEnum):
    OK = 0
    #: Something went wrong that has no more specific code.
    FAILURE = 1
    #: The command line was wrong (sendmail: an unknown option).
    USAGE = 64
    #: The input message was unusable (no recipients, not a message).
    DATAERR = 65
    #: An input file (an attachment, the config) does not exist.
    NOINPUT = 66
    #: A needed service is unavailable.
    UNAVAILABLE = 69
    #: A bug in mqd or a plugin.
    SOFTWARE = 70
    #: An output file or directory cannot be created (the spool is not writable).
    CANTCREAT = 73
    #: A read or write failed.
    IOERR = 74
    #: Try again later: the queue directory is in use by another mqd.
    TEMPFAIL = 75
    #: Not permitted (a file with a secret is readable by others).
    NOPERM = 77
    #: The configuration is invalid.
    CONFIG = 78
