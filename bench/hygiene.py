"""What every bench does to leave nothing behind when it is stopped."""

from __future__ import annotations

import signal
import sys
from types import FrameType


def exit_on_sigterm() -> None:
    """Make SIGTERM (``timeout``, ``kill``) exit through ``finally`` blocks like Ctrl-C does.

    A bench's ``finally`` stops the servers it started and deletes its Redis namespace; Python's
    default SIGTERM handling skips both, leaving processes running and keys in the shared Redis.
    """

    def stop(signum: int, _frame: FrameType | None) -> None:
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
