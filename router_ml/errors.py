"""The errors router-ml raises on purpose.

:class:`RouterMLError` is the root. Its :class:`UserError` branch is what the user can fix (bad data, flags, files,
configuration, an unknown version): the command line prints it as one ``error:`` line and exits 2. Anything else
that escapes is a bug, and shows its traceback.

=========================  ======================================  =========================================
class                      also a                                  raised for
=========================  ======================================  =========================================
:class:`InvalidInput`      ``ValueError``                          a value that breaks a contract (names it)
:class:`MissingInput`      ``FileNotFoundError``                   a file or folder the user named is absent
:class:`UnknownName`       ``KeyError``                            a model, version or alias that is not there
=========================  ======================================  =========================================

The service's own conditions (an unknown decision, a log that cannot be written, ...) live in
:mod:`router_ml.decision_log` and derive from these too.
"""

from __future__ import annotations


class RouterMLError(Exception):
    """The root of every error router-ml raises on purpose."""


class UserError(RouterMLError):
    """Something the user can fix; the command line shows the message as one line and exits 2."""


class InvalidInput(UserError, ValueError):
    """A value breaks a contract; the message names the field or flag."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (or lacks a part it needs)."""


class UnknownName(UserError, KeyError):
    """A model, version or alias that is not there."""

    def __str__(self) -> str:
        # KeyError quotes its argument; the message is meant to be read as it is
        return str(self.args[0]) if self.args else ""
