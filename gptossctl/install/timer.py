"""The daily compliance timer laid down with every instance: a hardened oneshot service that runs
`gptossctl compliance check` for the instance and writes its JSON, SARIF, JUnit and Prometheus reports. Before
it (Wants=, After=) `gptossctl consumers sync` runs in its own unit, where consumers are managed: a rotated
key whose grace has ended leaves the router without an operator (install/consumers.py)."""

from __future__ import annotations

import sys

from gptossctl.adapters.systemd import Systemd
from gptossctl.fsutil import atomic_write
from gptossctl.install.layout import Layout
from gptossctl.resources import data_dir
from gptossctl.templates import fill_template

COMPLIANCE_UNITS = ("gptoss-compliance@.service", "gptoss-compliance@.timer", "gptoss-consumers@.service")


def compliance_unit_names(layout: Layout) -> tuple[str, str, str]:
    """The instance's units of COMPLIANCE_UNITS, in that order."""
    return layout.compliance_unit, layout.compliance_timer, f"gptoss-consumers@{layout.instance}.service"


def install_compliance_timer(layout: Layout, systemd: Systemd) -> str:
    """Lay down and enable the timer; it runs the gptossctl that installed it. Returns what was done."""
    for name in COMPLIANCE_UNITS:
        text = fill_template((data_dir("systemd") / name).read_text(), {"python": sys.executable})
        atomic_write(layout.unit_dir / name, text, 0o644)
    systemd.daemon_reload()
    systemd.enable(layout.compliance_timer, now=systemd.live)
    return f"{layout.compliance_timer} enabled: reports in {layout.live_path(layout.compliance_dir)}"


def remove_compliance_timer(layout: Layout, systemd: Systemd, *, last: bool) -> list[str]:
    timer = layout.compliance_timer
    removed = []
    if systemd.live:
        systemd.stop(timer)
    systemd.disable(timer)
    if last:
        for name in COMPLIANCE_UNITS:
            if (layout.unit_dir / name).exists():
                (layout.unit_dir / name).unlink()
                removed.append(str(layout.unit_dir / name))
    return removed
