"""A progress bar for fitting that stays quiet when not on a terminal."""

from __future__ import annotations

import math
import sys


class FitProgress:
    """Candidates done and best validation error so far.

    `enabled=True` means "when stderr is a terminal" (quiet in CI, pipes and
    logs); ``"always"`` forces it on; False switches it off.
    """

    def __init__(self, total: int, enabled=True, stream=None):
        self.stream = sys.stderr if stream is None else stream
        if enabled == "always":
            on = True
        else:
            on = bool(enabled) and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = on
        self.total = total
        self.done = 0
        self.best = math.inf
        self._bar = None
        if on:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="fitting", unit="cand", file=self.stream,
                             dynamic_ncols=True)

    def update(self, done: int, best_val: float | None = None) -> None:
        """Set the number of candidates done (monotone) and offer a validation error."""
        if best_val is not None and math.isfinite(best_val):
            self.best = min(self.best, best_val)
        step = max(0, done - self.done)
        self.done += step
        if self._bar is not None:
            if math.isfinite(self.best):
                self._bar.set_postfix_str(f"best val RMSE {self.best:.3g} mV", refresh=False)
            self._bar.update(step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
