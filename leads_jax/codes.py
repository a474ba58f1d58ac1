"""Result codes shared by :func:`~leads_jax.simulate.simulate`, the fitting engine
(:mod:`leads_jax.fit`) and the stability audit: one enumeration, one wording.

Codes are plain integers inside traced code (``Trajectory.reason``, the engine's
``MemberStatus.reason``) and become :class:`ResultCode` members on the host.
``0``-``3`` come from a solve; ``4`` is the engine's own (a finite trajectory whose
loss or gradient is not finite).
"""

from __future__ import annotations

import enum

__all__ = ["ResultCode"]


class ResultCode(enum.IntEnum):
    """Why a solve or a fitted member stopped (``0``: it did not)."""

    OK = 0
    NONFINITE_STATE = 1
    OUT_OF_BOUNDS = 2
    MAX_STEPS = 3
    NONFINITE_GRADIENT = 4

    @property
    def message(self) -> str:
        """Plain-language reason, as written in results and reports."""
        return _MESSAGES[self]

    @classmethod
    def describe(cls, code) -> str:
        """The message of an integer code (host side); unknown codes say so."""
        try:
            return cls(int(code)).message
        except ValueError:
            return f"unknown result code {int(code)}"


_MESSAGES = {
    ResultCode.OK: "ok",
    ResultCode.NONFINITE_STATE: "non-finite state",
    ResultCode.OUT_OF_BOUNDS: "state left the model's bounds",
    ResultCode.MAX_STEPS: "solver reached max_steps",
    ResultCode.NONFINITE_GRADIENT: "non-finite loss or gradient",
}
