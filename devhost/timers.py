"""Timer schedules: NCRONTAB (6 fields, seconds first, UTC) via croniter, or a TimeSpan interval.

functions-bindings-timer#ncrontab-expressions: ``{second} {minute} {hour} {day} {month} {day-of-week}``; the
5-field form is also accepted (functions-bindings-timer#ncrontab-examples); times are UTC unless WEBSITE_TIME_ZONE,
which devhost ignores (not supported on Flex Consumption either). ``hh:mm:ss`` TimeSpan schedules (App Service
plans only) run at that fixed interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter

from devhost.config import DevHostError, parse_timespan


@dataclass(frozen=True)
class Schedule:
    """A resolved timer schedule."""

    expression: str
    fields: int  # 6 or 5 for NCRONTAB, 0 for a TimeSpan interval
    interval: float | None = None

    def next_after(self, moment: datetime) -> datetime:
        """Next occurrence strictly after ``moment`` (aware UTC datetime)."""
        if self.interval is not None:
            return moment + timedelta(seconds=self.interval)
        it = croniter(self.expression, moment, second_at_beginning=self.fields == 6)
        nxt = it.get_next(datetime)
        assert isinstance(nxt, datetime)
        return nxt if nxt.tzinfo else nxt.replace(tzinfo=UTC)


def parse_schedule(expression: str, *, function_name: str) -> Schedule:
    """Validate a schedule string.

    Raises:
        DevHostError: not a valid NCRONTAB expression or TimeSpan.
    """
    expr = " ".join(expression.split())
    where = f"function '{function_name}': schedule {expression!r}"
    if ":" in expr and " " not in expr:
        seconds = parse_timespan(expr, what=where)
        if seconds <= 0:
            raise DevHostError(f"{where}: interval must be positive")
        return Schedule(expression=expr, fields=0, interval=seconds)
    n = len(expr.split(" "))
    if n not in (5, 6):
        raise DevHostError(
            f"{where}: NCRONTAB needs 6 fields '{{second}} {{minute}} {{hour}} {{day}} {{month}} {{day-of-week}}' "
            f"(or 5), got {n}"
        )
    try:
        schedule = Schedule(expression=expr, fields=n)
        schedule.next_after(datetime.now(UTC))
    except (CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, ValueError, KeyError) as exc:
        raise DevHostError(f"{where}: invalid NCRONTAB expression: {exc}") from exc
    return schedule
