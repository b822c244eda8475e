"""The one base class of every error a user can fix by changing params, data or a source.

Stage scripts catch it (:func:`layerwise.cli.run_script`) and print one line naming the bad
value instead of a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad params, data, source or environment: the message names the bad value."""
