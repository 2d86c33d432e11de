"""The one exception type of `sequax.data`.

Every data problem a user can fix (a missing or corrupt file, an unknown dataset or scenario
name, impossible scenario arguments) raises `DataError` with a one-line message that names the
offending path or value, says what is wrong, and says how to fix it.

    from sequax.data import DataError, load_source
    try: load_source("mnist", "/nowhere")
    except DataError as error: print(error)  # one line: path, problem, fix
"""


class DataError(ValueError):
    """A data file, dataset name or scenario argument is unusable; the message says the fix."""
