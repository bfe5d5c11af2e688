"""Human-readable output: IEC sizes, ages, aligned tables."""

from __future__ import annotations

from collections.abc import Sequence

_IEC = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def iec(size: float) -> str:
    """``1536`` -> ``1.5 KiB``; whole bytes below 1 KiB."""
    value = float(size)
    for unit in _IEC:
        if abs(value) < 1024 or unit == _IEC[-1]:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def age(seconds: float | None) -> str:
    """``5400`` -> ``1h30m``; ``None`` -> ``-``; negative (future) -> ``in the future``."""
    if seconds is None:
        return "-"
    if seconds < 0:
        return "in the future"
    whole = int(seconds)
    for unit, span, sub_unit, sub_span in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if whole >= span:
            main, rest = divmod(whole, span)
            minor = rest // sub_span
            return f"{main}{unit}{minor}{sub_unit}" if minor else f"{main}{unit}"
    return f"{whole}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns aligned by width; column indexes in ``right`` are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])
