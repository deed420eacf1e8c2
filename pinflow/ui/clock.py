"""Times and durations as people read them.

The server writes every instant as `<time datetime="…Z">` with its UTC text (what a page
without JavaScript shows); `static/pinflow.js` rewrites the text in the browser's own time
zone and keeps the UTC instant in the tooltip. Never microseconds: seconds are the finest a
person reads here. Durations read `40 ms`, `0.4 s`, `1.2 s`, `42 s`, `3 min 20 s`, `3 min`,
`2 h 5 min`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from markupsafe import Markup, escape


def parse_iso(value: str | None) -> datetime | None:
    """An instant of the API's JSON (`…Z` or an offset) as an aware UTC datetime."""
    if not value:
        return None
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def utc_text(moment: datetime, short: bool = False) -> str:
    return moment.strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S UTC")


def time_tag(value: str | None, short: bool = False, empty: str = "") -> Markup:
    """`<time>` for an ISO instant; `short` (month-day hour:minute) for tight places such as
    the grid's headers. The browser turns the text into its local time."""
    moment = parse_iso(value)
    if moment is None:
        return Markup(escape(empty))
    stamp = moment.isoformat(timespec="seconds").replace("+00:00", "Z")
    return Markup(
        '<time datetime="{}" title="{}"{}>{}</time>'.format(
            stamp,
            utc_text(moment),
            ' data-short="1"' if short else "",
            utc_text(moment, short),
        )
    )


def duration_text(seconds: float | None) -> str:
    """How long, rounded to what matters at that size."""
    if seconds is None:
        return ""
    seconds = max(seconds, 0.0)
    if seconds < 0.1:  # not "0.0 s" for a quick task
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 10:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def seconds_of(start: str | None, end: str | None, now: datetime | None = None) -> float | None:
    """Seconds from `start` to `end` (ISO instants); to `now` when it has not ended."""
    a, b = parse_iso(start), parse_iso(end) or now
    if a is None or b is None:
        return None
    return (b - a).total_seconds()


def ago(value: str | None) -> str:
    moment = parse_iso(value)
    if moment is None:
        return ""
    seconds = (datetime.now(UTC) - moment).total_seconds()
    return f"{duration_text(seconds)} ago" if seconds >= 0 else f"in {duration_text(-seconds)}"
