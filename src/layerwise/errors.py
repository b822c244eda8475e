"""The one base class of every error a user can fix by changing params, data or a source.

Stage scripts catch it (:func:`layerwise.cli.run_script`) and print one line naming the bad
value instead of a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad params, data, source or environment: the message names the bad value."""


class MissingInputError(UserError, FileNotFoundError):
    """An input another stage makes is not there: the message names the stage to run."""


class StaleInputError(UserError):
    """An input another stage made does not have the shape this code reads (made by older code
    or edited by hand): the message names the file and what to rerun."""


class SourceError(UserError):
    """A source (a model or data set named in params) cannot be resolved to local files."""
