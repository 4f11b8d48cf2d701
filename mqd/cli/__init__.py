"""The ``mqd`` command line (click): one module per command group, each thin."""
