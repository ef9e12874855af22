"""Entries and exits per segment and hour, and sampled sizes: the churn dashboard's memory."""

from __future__ import annotations

from collections import deque
from typing import Any


class ChurnHistory:
    """Entries and exits per segment and cause in hourly buckets (the last 48 hours)."""

    def __init__(self, hours: int = 48, sample_every_s: float = 60.0) -> None:
        self.hours = hours
        self.sample_every_s = sample_every_s
        self.buckets: dict[int, dict[tuple[str, str, str], int]] = {}
        self.sizes: deque[tuple[float, dict[str, int]]] = deque(
            maxlen=int(hours * 3600 / sample_every_s) + 1
        )

    def sample_sizes(self, sizes: dict[str, int], now: float) -> None:
        """Keeps segment sizes for the size-over-time chart (one sample per interval)."""
        if not self.sizes or now - self.sizes[-1][0] >= self.sample_every_s * 0.99:
            self.sizes.append((now, dict(sizes)))

    def history(self, now: float) -> dict[str, Any]:
        """The dashboard's series: hourly entries/exits, exit causes, sampled sizes."""
        current = int(now // 3600)
        hours = list(range(current - self.hours + 1, current + 1))
        entered: dict[str, list[int]] = {}
        exited: dict[str, list[int]] = {}
        causes: dict[str, dict[str, int]] = {}
        for index, hour in enumerate(hours):
            for (segment, change, cause), count in self.buckets.get(hour, {}).items():
                series = entered if change == "entered" else exited
                series.setdefault(segment, [0] * len(hours))[index] += count
                if change == "exited":
                    per = causes.setdefault(segment, {})
                    per[cause] = per.get(cause, 0) + count
        return {
            "hours": [hour * 3600 for hour in hours],
            "entered": entered,
            "exited": exited,
            "exit_causes": causes,
            "sizes": [{"at": at, "sizes": sizes} for at, sizes in self.sizes],
        }

    def record(self, segment: str, change: str, cause: str, now: float) -> None:
        hour = int(now // 3600)
        bucket = self.buckets.setdefault(hour, {})
        bucket[(segment, change, cause)] = bucket.get((segment, change, cause), 0) + 1
        for old in [h for h in self.buckets if h <= hour - self.hours]:
            del self.buckets[old]

    def rates(self, now: float) -> dict[str, dict[str, Any]]:
        """Per segment: entries and exits in the trailing hour, and the top exit cause."""
        out: dict[str, dict[str, Any]] = {}
        hour, into = int(now // 3600), (now % 3600) / 3600
        causes: dict[str, dict[str, int]] = {}
        for bucket_hour, weight in ((hour, 1.0), (hour - 1, 1.0 - into)):
            for (segment, change, cause), count in self.buckets.get(bucket_hour, {}).items():
                entry = out.setdefault(segment, {"entered_last_hour": 0, "exited_last_hour": 0})
                entry[f"{change}_last_hour"] += round(count * weight)
                if change == "exited":
                    per = causes.setdefault(segment, {})
                    per[cause] = per.get(cause, 0) + count
        for segment, per in causes.items():
            out[segment]["top_exit_cause"] = max(per, key=per.__getitem__)
        return out
