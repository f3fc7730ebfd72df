"""Progress bars: tqdm's bar on a terminal; in a log (DVC's output piped, CI) one line when the loop ends,
instead of a carriage-return update every tenth of a second."""
from __future__ import annotations

import io
import sys

from tqdm import tqdm


def progress(iterable=None, **kwargs) -> tqdm:
    """`tqdm(iterable, **kwargs)` where stderr is a terminal; elsewhere a bar that writes one final line."""
    if kwargs.get("disable") or sys.stderr.isatty():
        return tqdm(iterable, **kwargs)
    return _OneLine(iterable, **kwargs)


class _OneLine(tqdm):
    """A tqdm that draws into a buffer nobody reads and writes its final state to stderr once, on close."""

    def __init__(self, iterable=None, **kwargs):
        super().__init__(iterable, file=io.StringIO(), mininterval=3600.0, **kwargs)

    def close(self) -> None:
        if not self.disable and not getattr(self, "_reported", False):
            self._reported = True
            print(self.format_meter(**(self.format_dict | {"ncols": 0})), file=sys.stderr, flush=True)
        super().close()
