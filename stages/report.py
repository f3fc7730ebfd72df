"""Stage report: the results page, from what the evaluation and training stages wrote under reports/.

python -m stages.report  ->  reports/index.html (tables, example maps, training curves; opens without a server)
"""
from __future__ import annotations

import sys
import time

from pipeline import paths
from pipeline.report import build_report
from pipeline.stage import StageError

# The page reads every dataset role's reports and no params, so it takes no arguments.
PAGE = paths.REPORT_PAGE


def main() -> None:
    start = time.perf_counter()
    try:
        build_report(paths.REPORTS, PAGE)
    except StageError as err:
        print(f"report: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"report: wrote {PAGE} ({PAGE.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s",
          flush=True)


if __name__ == "__main__":
    main()
