"""The version of mqd (a leaf: the package facade and every module that reports it import it)."""

__version__ = "0.1.0"
