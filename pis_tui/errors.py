"""Errors a user can cause or meet, each with the exit code the CLI returns.

| code | meaning |
|------|---------|
| 0    | success |
| 1    | an unexpected internal error (a bug: please report it) |
| 2    | bad input: unknown preset or GPU, missing or malformed config, unsupported
|      | model, out-of-range number, unwritable output path |
| 3    | a failure while measuring (no usable device, a kernel that failed) |
| 4    | the cache could not be used (locked by another process too long, unusable path) |
| 130  | interrupted (Ctrl-C); what was measured is kept |
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_MEASURE = 3
EXIT_CACHE = 4
EXIT_INTERRUPTED = 130
#: the reader of our output went away (`pis-tui sweep … | head`): 128 + SIGPIPE, as the shell says
EXIT_PIPE = 141


class PisError(Exception):
    """An error with a one-line message meant for the user."""

    exit_code = EXIT_INTERNAL


class UserError(PisError):
    """Bad input: the user can fix it."""

    exit_code = EXIT_BAD_INPUT


class MeasureError(PisError):
    exit_code = EXIT_MEASURE


class CacheError(PisError):
    exit_code = EXIT_CACHE
