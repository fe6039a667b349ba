"""The one exception type for mistakes a user can make (bad config, bad data, bad ids, bad bundle).

`cli.main` turns it into a one-line message and exit code 2. Anything else is a bug and raises.
"""


class RecallError(Exception):
    """A user-caused error. The message names the field or file and says how to fix it."""
