"""The ``realm`` command line."""
