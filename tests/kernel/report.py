"""pytest plugin loaded inside the nested host (`-p tests.kernel.report --kvt-report PATH`):
writes each test's reports (setup, call, teardown) and each failed collection as one JSON line,
which the host's proxy items (tests/kernel/conftest.py) turn into their own outcomes.

A line: {"nodeid", "when" ("setup" | "call" | "teardown" | "collect"), "outcome" ("passed" |
"failed" | "skipped"), "longrepr" (text), "message" (the failure's first line), "skip_reason",
"wasxfail" (or null), "duration" (s), "sections" ([title, content] pairs: captured output)}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--kvt-report", metavar="PATH", help="append the JSON lines to PATH")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--kvt-report")
    if path:
        config.pluginmanager.register(Reporter(Path(path)), "kvt-report")


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """A skip's reason: its longrepr is a (path, lineno, "Skipped: reason") tuple."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr or "")


def crash_message(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The failure's one-line message (e.g. "AssertionError: ..."), as pytest's summary shows."""
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", "")
    return str(message).splitlines()[0] if message else ""


def line(report: pytest.TestReport | pytest.CollectReport, when: str) -> dict[str, Any]:
    return {
        "nodeid": report.nodeid,
        "when": when,
        "outcome": report.outcome,
        "longrepr": report.longreprtext if report.failed else "",
        "message": crash_message(report) if report.failed else "",
        "skip_reason": skip_reason(report) if report.skipped else "",
        "wasxfail": getattr(report, "wasxfail", None),
        "duration": getattr(report, "duration", 0.0),
        "sections": [list(s) for s in report.sections],
    }


class Reporter:
    """Appends one JSON line per report to `path` (flushed at once: the VM may die any time)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, data: dict[str, Any]) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps(data) + "\n")

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.write(line(report, report.when))

    @pytest.hookimpl(trylast=True)
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.write(line(report, "collect"))
