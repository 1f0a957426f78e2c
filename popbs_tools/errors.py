"""Exceptions the core raises; the CLI turns each into one line and an exit code.

Exit codes (documented in popbs(8)):
  0  success
  1  a negative answer (`check`: the address may not relay)
  2  usage: unknown option, bad value, bad config file
  3  input: a log or input file cannot be read or is malformed
  4  output: the grant file, the map or standard output cannot be written,
     postmap missing or failed
  5  state: the state directory, lock or state file is unusable
  70 an unexpected internal error (a bug: run again with -v for the traceback)
  130 interrupted (Ctrl-C)
"""

EXIT_OK = 0
EXIT_NO = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_OUTPUT = 4
EXIT_STATE = 5
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class PopbsError(Exception):
    """An error the user can act on; its message is the whole explanation."""

    exit_code = EXIT_INTERNAL


class SettingsError(PopbsError):
    exit_code = EXIT_USAGE


class InputError(PopbsError):
    exit_code = EXIT_INPUT


class MapError(PopbsError):
    exit_code = EXIT_OUTPUT


class OutputError(PopbsError):
    exit_code = EXIT_OUTPUT


class StateError(PopbsError):
    exit_code = EXIT_STATE
