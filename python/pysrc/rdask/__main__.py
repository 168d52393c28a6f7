"""``python -m rdask ARGS``: the ``rdask-jobqueue`` command, run in this interpreter.

Clusters started this way start their scheduler and workers as ``python -m rdask`` too, so
workers run Python tasks in the same interpreter and environment as the client.
"""

import signal
import sys

from rdask import _rdask


def main() -> int:
    # As the rdask-jobqueue binary: Ctrl-C and a closed pipe end the program (Python would
    # otherwise hold SIGINT until the Rust code returns, and ignore SIGPIPE).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return _rdask.main(["rdask"] + sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
