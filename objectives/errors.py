"""The one exception type that means "the user's input is wrong", not "the code is wrong".

The CLI turns it into a single line on stderr and exit code 2; anything else is a bug and keeps
its traceback.
"""


class InputError(Exception):
    """Bad input (data folder, search-space file, option, missing weights): message is one line."""
