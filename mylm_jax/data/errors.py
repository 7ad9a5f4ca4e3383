"""Bad input: skip it and count it, or stop with one line that says where and why.

Every reader and loader takes a `SkipLog`. A record that cannot be used is reported
with `log.skip(location, reason)`:

    on_error="fail"   raises DataError("data/x.jsonl:17: invalid JSON (...)")
    on_error="skip"   counts it by reason and keeps the first few locations

so that records in = records kept + records skipped, always, and the report says
where the skipped ones were.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

OnError = Literal["skip", "fail"]
MAX_EXAMPLES = 5


class DataError(ValueError):
    """A user's data mistake, as one line naming the file (and line) and what was expected."""


@dataclass
class SkipLog:
    on_error: OnError = "skip"
    reasons: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.on_error not in ("skip", "fail"):
            raise DataError(f"on_error must be 'skip' or 'fail', got {self.on_error!r}")

    def skip(self, location: str, reason: str, kind: str | None = None) -> None:
        """Record one unusable record (`kind` groups reasons in the counts, default: reason)."""
        if self.on_error == "fail":
            raise DataError(f"{location}: {reason}")
        self.reasons[kind or reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{location}: {reason}")

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def report(self) -> dict:
        return {"skipped": self.total, "by_reason": dict(sorted(self.reasons.items())),
                "first": list(self.examples)}

    def summary(self) -> str:
        if not self.total:
            return "skipped 0"
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.reasons.items()))
        return f"skipped {self.total} ({reasons}); first: " + "; ".join(self.examples)
