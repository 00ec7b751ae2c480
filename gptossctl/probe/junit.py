"""JUnit XML that CI tools (Jenkins, GitLab, GitHub reporters) load: one testsuite, one testcase per check."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str
    status: str  # "pass", "fail", "n/a"
    message: str
    seconds: float = 0.0
    classname: str = "gptossctl"


def junit_xml(suite: str, cases: Sequence[Case]) -> bytes:
    failures = sum(c.status == "fail" for c in cases)
    skipped = sum(c.status == "n/a" for c in cases)
    root = ET.Element("testsuites", name=suite, tests=str(len(cases)), failures=str(failures),
                      errors="0", skipped=str(skipped))
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cases)), failures=str(failures),
                       errors="0", skipped=str(skipped), time=f"{sum(c.seconds for c in cases):.3f}")
    for c in cases:
        tc = ET.SubElement(ts, "testcase", classname=c.classname, name=c.name, time=f"{c.seconds:.3f}")
        if c.status == "fail":
            ET.SubElement(tc, "failure", message=c.message[:500], type="check_failed").text = c.message
        elif c.status == "n/a":
            ET.SubElement(tc, "skipped", message=c.message[:500])
        else:
            ET.SubElement(tc, "system-out").text = c.message
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))
