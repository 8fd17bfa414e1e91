"""The connection page's chart: delivered and failed records per hour over the last 24 hours, drawn on the server as
an SVG (templates/admin/integrations/delivery_chart.svg): no script, no request of its own."""

from __future__ import annotations

from django.template.loader import render_to_string

from integrations.stats import ConnectionDay

CHART_WIDTH, CHART_HEIGHT, CHART_TOP = 480, 96, 12


def delivery_chart_svg(day: ConnectionDay) -> str:
    """Delivered (green) and failed (red) bars, one per hour; each bar's tooltip gives the hour and the numbers."""
    slot = CHART_WIDTH / len(day.points)
    plot = CHART_HEIGHT - CHART_TOP - 14
    base = CHART_TOP + plot
    peak = max([point.delivered + point.failed for point in day.points] + [1])
    bars = []
    for index, point in enumerate(day.points):
        delivered = plot * point.delivered / peak
        failed = plot * point.failed / peak
        bars.append(
            {
                "title": f"{point.hour:%H}:00 UTC: {point.delivered:,} delivered, {point.failed:,} failed",
                "x": f"{index * slot + 1:.1f}",
                "width": f"{slot - 2:.1f}",
                "delivered_y": f"{base - delivered:.1f}",
                "delivered_height": f"{delivered:.1f}",
                "failed_y": f"{base - delivered - failed:.1f}",
                "failed_height": f"{failed:.1f}",
                "label": f"{point.hour:%H}:00" if index % 6 == 0 else "",
            }
        )
    context = {
        "label": f"Delivered and failed records per hour, last 24 hours: {day.delivered:,} delivered, "
        f"{day.failed:,} failed",
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "base": f"{base:.1f}",
        "peak": f"{peak:,}",
        "bars": bars,
        "label_y": CHART_HEIGHT - 2,
        "now_x": CHART_WIDTH - 22,
    }
    return render_to_string("admin/integrations/delivery_chart.svg", context)
