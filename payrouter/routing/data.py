"""Finding routing data: RouterBench-format CSVs named on the command line, checked up front.

Routing data never ships with payrouter (RouterBench is MIT-licensed, but it is the user's to
fetch); a missing file is one clear sentence naming the path and the format, not a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from payrouter.routing.predictor import RouterRow, load_rows

__all__ = ["DATA_HELP", "RoutingDataError", "read_routing_data"]

DATA_HELP = (
    "a RouterBench-format CSV: columns prompt, eval_name, and per model M: M|score, M|cost_usd, "
    "M|response_chars (README, 'Routing data')"
)


class RoutingDataError(ValueError):
    """A routing data file is missing, unreadable or not in the RouterBench format."""


def read_routing_data(paths: Iterable[str | Path]) -> list[RouterRow]:
    """Every row of ``paths``, in order.

    Raises:
        RoutingDataError: a path does not exist or is not a file, a file lacks the columns, or
            the files hold no rows.
    """
    files = [Path(p) for p in paths]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise RoutingDataError(f"routing data not found: {', '.join(missing)}; expected {DATA_HELP}")
    try:
        rows = load_rows(files)
    except (OSError, UnicodeDecodeError) as exc:
        raise RoutingDataError(f"cannot read routing data: {exc}") from None
    except ValueError as exc:
        raise RoutingDataError(f"{exc}; expected {DATA_HELP}") from None
    if not rows:
        raise RoutingDataError(f"no rows in {', '.join(map(str, files))}; expected {DATA_HELP}")
    return rows
