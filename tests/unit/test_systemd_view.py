"""The drop-in directories and the unit file systemd would use for a unit, read off a tree (systemd.unit(5))."""

from __future__ import annotations

from pathlib import Path

from gptossctl.adapters.systemd import Systemd
from gptossctl.compliance.units import SEARCH_PATH, Installed, applied_dropins, dropin_dir_names, fragment, view
from gptossctl.install.layout import Layout


def test_dropin_names_follow_systemd_template_dash_prefix_and_type_wide() -> None:
    assert dropin_dir_names("a-b-c.service") == ["a-b-c.service.d", "a-b-.service.d", "a-.service.d", "service.d"]
    assert dropin_dir_names("gptoss-router@x.service") == ["gptoss-router@x.service.d", "gptoss-router@.service.d",
                                                           "gptoss-.service.d", "service.d"]
    # The dashes of an instance name are not prefixes: systemd cuts the part before '@' only.
    assert dropin_dir_names("gptoss@tiny-r1.service") == ["gptoss@tiny-r1.service.d", "gptoss@.service.d",
                                                          "service.d"]
    assert dropin_dir_names("gptoss-compliance@x.timer")[-2:] == ["gptoss-.timer.d", "timer.d"]


def test_every_directory_of_the_search_path_is_read(tmp_path: Path) -> None:
    for base in SEARCH_PATH:
        d = tmp_path / base / "gptoss@.service.d"
        d.mkdir(parents=True)
        (d / "x.conf").write_text("[Unit]\n")
        (d / "ignored.txt").write_text("systemd reads only *.conf\n")
    found = applied_dropins(tmp_path, "gptoss@x.service")
    assert [str(p.relative_to(tmp_path)) for p in found] == [f"{b}/gptoss@.service.d/x.conf" for b in SEARCH_PATH]


def test_the_first_unit_file_on_the_path_wins_and_an_instance_file_beats_the_template(tmp_path: Path) -> None:
    ours = tmp_path / "etc/systemd/system/gptoss@x.service"
    ours.parent.mkdir(parents=True)
    ours.write_text("")
    assert fragment(tmp_path, "gptoss@x.service") == ours
    later = tmp_path / "run/systemd/system/gptoss@x.service"
    later.parent.mkdir(parents=True)
    later.write_text("")
    assert fragment(tmp_path, "gptoss@x.service") == ours
    earlier = tmp_path / "run/systemd/system.control/gptoss@x.service"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("")
    assert fragment(tmp_path, "gptoss@x.service") == earlier
    template = tmp_path / "etc/systemd/system/gptoss-compliance@.timer"
    template.write_text("")
    assert fragment(tmp_path, "gptoss-compliance@x.timer") == template
    instance = tmp_path / "usr/lib/systemd/system/gptoss-compliance@x.timer"
    instance.parent.mkdir(parents=True)
    instance.write_text("")
    assert fragment(tmp_path, "gptoss-compliance@x.timer") == instance


class _AskedSystemd(Systemd):
    """systemd as `systemctl show` answers on a live host (no subprocess)."""

    def show(self, unit: str, *props: str) -> dict[str, str]:
        assert props == ("DropInPaths", "FragmentPath", "NeedDaemonReload")
        return {"DropInPaths": "/run/systemd/system.control/gptoss@x.service.d/50-CPUWeight.conf "
                               "/etc/systemd/system/service.d/10-site.conf",
                "FragmentPath": "/run/systemd/transient/gptoss@x.service", "NeedDaemonReload": "yes"}


def test_live_what_systemd_reports_is_what_is_checked() -> None:
    layout = Layout(Path("/"), "x")
    unit = Installed(layout.unit_name, layout.unit_path, "")
    v = view(layout, _AskedSystemd(None), unit)
    assert v.asked and v.need_reload
    assert v.fragment == Path("/run/systemd/transient/gptoss@x.service")
    assert v.dropins[:2] == (Path("/run/systemd/system.control/gptoss@x.service.d/50-CPUWeight.conf"),
                             Path("/etc/systemd/system/service.d/10-site.conf"))
