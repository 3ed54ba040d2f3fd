"""Log records to stderr for the command-line entry points (backend and training)."""
from __future__ import annotations

import logging
import sys


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record, not the stream of the first call
    (a host or a test harness may swap and close streams between calls of main())."""
    socioseg_cli = True

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass

    def emit(self, record):
        """Above a tqdm progress bar while one is shown (tqdm.write clears the bar's line first and
        draws it again below), so that no record lands in the middle of the bar's line."""
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is None or not getattr(tqdm, "_instances", None):
            return super().emit(record)
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:     # as StreamHandler.emit: a broken stream must not end the program
            self.handleError(record)


def setup_logging(level: int, fmt: str = "%(levelname)s: %(message)s") -> None:
    """One handler of ours on the root logger, replaced on every call (running main() twice in one
    process, or under a host with handlers of its own, neither doubles nor loses lines)."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "socioseg_cli", False)]:
        root.removeHandler(h)
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "urllib3", "filelock", "PIL", "pyogrio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
