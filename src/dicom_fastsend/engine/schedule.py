"""Time windows (``--schedule``) and pauses: pure code with an injected clock.

A schedule is a list of windows, each a rate limit or a pause::

    Mon-Fri 19:00-07:00=0; Mon-Fri 07:00-19:00=20; Sat-Sun=0

``DAYS [HH:MM-HH:MM]=VALUE``: the days are a day, a range (``Mon-Fri``,
``Fri-Mon``) or a comma list of those; without times the window is the whole
day; a window that ends before it starts runs past midnight into the next
day (``Mon-Fri 19:00-07:00`` is Monday 19:00 to Tuesday 07:00 ... Friday
19:00 to Saturday 07:00). VALUE is a rate in MB/s (0: no limit) or
``pause``. Where windows overlap, the first one written wins; a moment no
window covers runs at ``--max-rate``. Times are the local wall clock.

``Schedule.at`` says which setting holds at a moment and when it next
changes; ``Pacer`` follows a clock (the system's, or an injected one) and a
manual pause (SIGUSR1), and keeps the record of pauses for the summary.
Nothing here touches a process or a socket: the coordinator applies what
the pacer decides (coordinator.py), and the tests drive it with a fake clock.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

import msgspec
from msgspec import field

DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MINUTES_PER_DAY: Final = 24 * 60
MINUTES_PER_WEEK: Final = 7 * MINUTES_PER_DAY
# The environment variable that replaces the wall clock the schedule follows:
# "2026-11-30T18:59:58" (the start, local time) or "2026-11-30T18:59:58*60"
# (and 60 schedule seconds pass per real second). For tests and rehearsals
# of a schedule; nothing else reads it.
CLOCK_VARIABLE: Final = "FASTSEND_SCHEDULE_CLOCK"

_WINDOW = re.compile(
    r"^(?P<days>[A-Za-z,\- ]+?)\s*(?:\s(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2}))?"
    r"\s*=\s*(?P<value>\S+)$"
)


class ScheduleError(ValueError):
    """A --schedule that cannot be read: the message names the window and why."""


class Setting(msgspec.Struct, frozen=True):
    """What holds during a window: a rate limit (MB/s, 0 = none) or a pause."""

    rate_mb_s: float = 0.0
    paused: bool = False
    window: str = ""  # the window as written; "" outside every window

    def describe(self) -> str:
        if self.paused:
            return "paused"
        return f"rate limit {self.rate_mb_s:g} MB/s" if self.rate_mb_s > 0 else "no rate limit"


class Window(msgspec.Struct, frozen=True):
    text: str
    days: tuple[int, ...]  # 0 = Monday, as datetime.weekday()
    start: int  # minutes after midnight
    end: int  # minutes after midnight; <= start: runs into the next day
    setting: Setting


class Schedule(msgspec.Struct, frozen=True):
    """The windows of a week, first match wins."""

    windows: tuple[Window, ...]
    text: str = ""

    def _minute_settings(self, outside: Setting) -> list[Setting]:
        # One entry per minute of the week (10,080): simple, and obviously right
        # for windows that wrap past midnight or past Sunday.
        week = [outside] * MINUTES_PER_WEEK
        claimed = [False] * MINUTES_PER_WEEK
        for window in self.windows:
            length = (window.end - window.start) % MINUTES_PER_DAY or MINUTES_PER_DAY
            for day in window.days:
                first = day * MINUTES_PER_DAY + window.start
                for minute in range(first, first + length):
                    slot = minute % MINUTES_PER_WEEK
                    if not claimed[slot]:
                        claimed[slot] = True
                        week[slot] = window.setting
        return week

    def at(self, moment: datetime, outside: Setting) -> tuple[Setting, datetime | None]:
        """The setting at ``moment`` (local time), and when it next changes (None: never)."""
        week = self._minute_settings(outside)
        index = moment.weekday() * MINUTES_PER_DAY + moment.hour * 60 + moment.minute
        current = week[index]
        minute_start = moment.replace(second=0, microsecond=0)
        for ahead in range(1, MINUTES_PER_WEEK):
            if week[(index + ahead) % MINUTES_PER_WEEK] != current:
                return current, minute_start + timedelta(minutes=ahead)
        return current, None


def parse_schedule(text: str) -> Schedule:
    """Parse ``--schedule``; ScheduleError names the window that is wrong."""
    windows: list[Window] = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        match = _WINDOW.match(part)
        if match is None:
            raise ScheduleError(
                f"schedule window {part!r}: expected DAYS [HH:MM-HH:MM]=MB/s or =pause, "
                "e.g. 'Mon-Fri 07:00-19:00=20'"
            )
        days = _days(match["days"].strip(), part)
        if match["start"] is None:
            start = end = 0  # the whole day
        else:
            start = _minute(match["start"], part)
            end = _minute(match["end"], part)
            if start == end and match["end"] != "24:00":  # 00:00-24:00: the whole day
                raise ScheduleError(
                    f"schedule window {part!r}: it starts and ends at the same time"
                )
        windows.append(Window(part, days, start, end, _setting(match["value"], part)))
    if not windows:
        raise ScheduleError("the schedule has no window; e.g. 'Mon-Fri 07:00-19:00=20'")
    return Schedule(tuple(windows), text)


def _days(text: str, window: str) -> tuple[int, ...]:
    days: list[int] = []
    for item in text.replace(" ", "").split(","):
        ends = item.split("-")
        if len(ends) > 2:
            raise ScheduleError(f"schedule window {window!r}: {item!r} is not a range of days")
        first, last = (_day(end, window) for end in (ends[0], ends[-1]))
        # Fri-Mon wraps over the weekend.
        days += [(first + step) % 7 for step in range((last - first) % 7 + 1)]
    return tuple(dict.fromkeys(days))


_FULL: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _day(name: str, window: str) -> int:
    for index, names in enumerate(zip(DAYS, _FULL, strict=True)):
        if name.lower() in (names[0].lower(), names[1].lower()):
            return index
    raise ScheduleError(
        f"schedule window {window!r}: {name!r} is not a day ({', '.join(DAYS)}; e.g. Mon-Fri)"
    )


def _minute(text: str, window: str) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if hours == 24 and minutes == 0:
        return 0  # 24:00 is the end of the day, the next day's 00:00
    if hours > 23 or minutes > 59:
        raise ScheduleError(
            f"schedule window {window!r}: {text} is not a time of day (00:00-24:00)"
        )
    return hours * 60 + minutes


def _setting(value: str, window: str) -> Setting:
    if value.lower() == "pause":
        return Setting(paused=True, window=window)
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not rate >= 0 or rate == float("inf"):
        raise ScheduleError(
            f"schedule window {window!r}: {value!r} is neither a rate in MB/s (0: no limit) "
            "nor 'pause'"
        )
    return Setting(rate_mb_s=rate, window=window)


# ---------------------------------------------------------------- clocks

Clock = Callable[[], datetime]  # the local wall time now


def system_clock() -> datetime:
    return datetime.now()


def fake_clock(start: datetime, speed: float = 1.0) -> Clock:
    """A clock that starts at ``start`` and runs ``speed`` times as fast as real time."""
    origin = time.monotonic()

    def now() -> datetime:
        return start + timedelta(seconds=(time.monotonic() - origin) * speed)

    return now


def clock_from_environment() -> Clock:
    """The clock the schedule follows: the system's, unless FASTSEND_SCHEDULE_CLOCK says."""
    value = os.environ.get(CLOCK_VARIABLE, "").strip()
    if not value:
        return system_clock
    start, _, speed = value.partition("*")
    try:
        return fake_clock(datetime.fromisoformat(start), float(speed) if speed else 1.0)
    except ValueError as exc:
        raise ScheduleError(
            f"{CLOCK_VARIABLE}={value!r}: expected a local time such as 2026-11-30T18:59:58, "
            f"optionally followed by *SPEED ({exc})"
        ) from None


# ---------------------------------------------------------------- the pacer


class Pause(msgspec.Struct):
    """One pause of the run: why, and when it began and ended.

    ``paused_at``/``resumed_at`` are on the schedule's clock (for a window:
    its boundaries); ``started``/``ended`` are the real time (time.time()),
    which says how long the run really waited.
    """

    why: str
    paused_at: datetime
    started: float
    resumed_at: datetime | None = None
    ended: float | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.ended is None else self.ended - self.started


def batch_bytes(rate_bytes_per_second: float, largest: int) -> int:
    """Bytes per batch under a rate limit: about PAUSE_LATENCY seconds of sending.

    A pause or a new rate takes effect at the next batch (coordinator.py),
    so under a limit a batch holds no more than that; without one, the
    usual ``largest`` (plan.BATCH_BYTES), which is a fraction of a second.
    """
    if rate_bytes_per_second <= 0:
        return largest
    return max(1, min(largest, int(rate_bytes_per_second * PAUSE_LATENCY)))


# Seconds of sending a batch holds under a rate limit (see batch_bytes).
PAUSE_LATENCY: Final = 1.0


class Pacer(msgspec.Struct):
    """Which setting holds now: the schedule's window, a manual pause, or --max-rate.

    ``update()`` is called by the coordinator's loop; it reads the schedule
    again only when the window changes, so it costs a clock read.
    """

    schedule: Schedule | None
    max_rate_mb_s: float = 0.0
    clock: Clock = system_clock
    wall: Callable[[], float] = time.time
    manual: bool = False  # SIGUSR1 toggles it
    setting: Setting = field(default_factory=Setting)
    pauses: list[Pause] = field(default_factory=list)
    _next_change: datetime | None = None
    _started: bool = False
    _manual_applied: bool = False

    @property
    def paused(self) -> bool:
        return self.setting.paused or self.manual

    @property
    def rate_mb_s(self) -> float:
        return self.setting.rate_mb_s

    def toggle_manual(self) -> None:
        self.manual = not self.manual

    def update(self) -> list[tuple[str, str]]:
        """Follow the clock; (level, text) for each change, for the log and the summary."""
        notes: list[tuple[str, str]] = []
        # As last applied: the signal handler may have toggled ``manual`` since.
        was_paused = self._started and (self.setting.paused or self._manual_applied)
        moment: datetime | None = None  # when the change happened, on the schedule's clock
        if not self._started:
            moment = self.clock()
            self._follow(moment, notes)
            self._started = True
        elif self._next_change is not None:
            now = self.clock()
            if now >= self._next_change:
                moment = self._next_change  # the window's boundary, not when we looked
                self._follow(now, notes)
        manual_changed = self.manual != self._manual_applied
        self._manual_applied = self.manual
        if manual_changed:
            moment = self.clock()
            if self.paused == was_paused:
                # SIGUSR1 during a scheduled pause: it goes on; say what the signal did.
                state = "manual pause on" if self.manual else "manual pause off"
                notes.append(("warning", f"SIGUSR1 at {moment:%Y-%m-%d %H:%M:%S}: {state}"))
        if self.paused != was_paused:
            assert moment is not None
            if self.paused:
                why = "SIGUSR1" if self.manual else f"schedule window {self.setting.window!r}"
                self.pauses.append(Pause(why, moment, self.wall()))
                notes.append(
                    (
                        "warning",
                        f"paused ({why}) at {moment:%Y-%m-%d %H:%M:%S}: no new batches; the "
                        "workers release their associations after the batch in hand",
                    )
                )
            else:
                pause = self.pauses[-1]
                pause.resumed_at, pause.ended = moment, self.wall()
                notes.append(
                    (
                        "warning",
                        f"resumed at {moment:%Y-%m-%d %H:%M:%S} after a pause of "
                        f"{pause.seconds:.1f} s ({pause.why})",
                    )
                )
        return notes

    def _follow(self, now: datetime, notes: list[tuple[str, str]]) -> None:
        """Take the setting of the window ``now`` is in."""
        outside = Setting(rate_mb_s=self.max_rate_mb_s)
        if self.schedule is None:
            setting, self._next_change = outside, None
        else:
            setting, self._next_change = self.schedule.at(now, outside)
        if self.schedule is not None and (setting != self.setting or not self._started):
            where = f"window {setting.window!r}" if setting.window else "outside every window"
            until = (
                f" until {self._next_change:%a %Y-%m-%d %H:%M}"
                if self._next_change is not None
                else ""
            )
            notes.append(("info", f"schedule: {where}: {setting.describe()}{until}"))
        self.setting = setting
