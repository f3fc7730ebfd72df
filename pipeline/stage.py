"""What every stage script shares: argument parsing, params loading, timing, one-line errors."""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from pipeline.config import ConfigError, Params, load_params


class StageError(RuntimeError):
    """A stage cannot go on; the message is one line naming the file or item and the problem."""


def run_stage(name: str, body: Callable[[Params, str], None]) -> None:
    """Parse `<dataset>`, load params.yaml, run `body(params, dataset)`, print its wall time.

    Known failures (bad params, a StageError) print one line and exit 2, with no traceback.
    """
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}")
    parser.add_argument("dataset", help="a key of `datasets` in params.yaml (music, vggsound)")
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        params = load_params(args.params)
        if args.dataset not in params.datasets:
            known = ", ".join(params.datasets)
            raise ConfigError(f"{args.params}: datasets.{args.dataset}: no such dataset (have {known})")
        body(params, args.dataset)
    except (ConfigError, StageError) as err:
        print(f"{name}@{args.dataset}: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"{name}@{args.dataset}: done in {time.perf_counter() - start:.1f} s", flush=True)
