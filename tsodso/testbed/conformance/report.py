"""Run a suite and report it: one line per rule ID (pass / fail / skip with the evidence), and
``conformance.json`` + ``conformance.html`` in the report directory."""

import html
import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from nacl.signing import VerifyKey

from tsodso.actors.config import Scenario
from tsodso.gateway import BrokerSpec
from tsodso.testbed.conformance.checks import CHECKS
from tsodso.testbed.conformance.rules import Rule, select
from tsodso.testbed.conformance.session import (
    Leave,
    Trace,
    play_bsp,
    play_dso,
    play_mo,
    play_tso,
)

PLAYS = {"bsp": play_bsp, "dso": play_dso, "tso": play_tso, "mo": play_mo}


@dataclass
class RuleResult:
    id: str
    title: str
    status: str  # pass | fail | skip
    evidence: str
    value: str | None
    bound: str | None


@dataclass
class Report:
    role: str
    device: str
    broker: str
    started: str
    duration_s: float
    speed: float
    aborted: str | None
    results: list[RuleResult]
    messages_seen: int

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.results) for s in ("pass", "fail", "skip")}

    @property
    def passed(self) -> bool:
        return self.aborted is None and self.counts["fail"] == 0

    def failed_ids(self) -> set[str]:
        return {r.id for r in self.results if r.status == "fail"}

    def to_json(self) -> dict:
        return {**asdict(self), "counts": self.counts, "passed": self.passed}

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "conformance.json").write_text(json.dumps(self.to_json(), indent=2) + "\n")
        (directory / "conformance.html").write_text(self.html())

    def html(self) -> str:
        colour = {"pass": "#1a7f37", "fail": "#cf222e", "skip": "#9a6700"}
        rows = "\n".join(
            f"<tr><td><code>{r.id}</code></td><td style='color:{colour[r.status]};font-weight:bold'>"
            f"{r.status.upper()}</td><td>{html.escape(r.title)}</td><td>{html.escape(r.evidence)}</td>"
            f"<td>{html.escape(r.value or '')}</td><td>{html.escape(r.bound or '')}</td></tr>"
            for r in self.results
        )
        c = self.counts
        verdict = "PASSED" if self.passed else "FAILED"
        aborted = f"<p><b>Session stopped early:</b> {html.escape(self.aborted)}</p>" if self.aborted else ""
        return f"""<!doctype html><html><head><meta charset="utf-8"><title>Conformance {self.role}/{self.device}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
table{{border-collapse:collapse}}</style></head><body>
<h1>Conformance of {self.role}/{html.escape(self.device)}: {verdict}</h1>
<p>{c["pass"]} passed, {c["fail"]} failed, {c["skip"]} skipped. Broker {html.escape(self.broker)}, started
{self.started}, {self.duration_s:.1f} s at speed {self.speed:g}, {self.messages_seen} messages from the device.
Rules: docs/conformance.md.</p>{aborted}
<table><tr><th>Rule</th><th>Result</th><th>Rule text</th><th>Evidence</th><th>Value</th><th>Bound</th></tr>
{rows}</table></body></html>
"""


def judge(trace: Trace, rules: list[Rule]) -> list[RuleResult]:
    out = []
    for rule in rules:
        if trace.isp0 is None:  # the session never started: nothing to judge but the missing birth
            status = "fail" if rule.id.endswith("-PR-010") else "skip"
            out.append(
                RuleResult(rule.id, rule.title, status, trace.aborted or "the session did not start", None, None)
            )
            continue
        try:
            o = CHECKS[rule.id](trace)
        except Exception as exc:  # a check that cannot judge says why instead of hiding the rest
            out.append(RuleResult(rule.id, rule.title, "fail", f"could not judge: {exc!r}", None, None))
            continue
        out.append(RuleResult(rule.id, rule.title, o.status, o.evidence, o.value, o.bound))
    return out


async def run_suite(
    role: str,
    device_id: str,
    broker: BrokerSpec | str,
    scenario: Scenario,
    *,
    rules: str = "*",
    speed: float = 1.0,
    timeout_s: float = 20.0,
    report_dir: Path | None = None,
    leave: Leave | None = None,
    observer: BrokerSpec | str | None = None,
    device_key: VerifyKey | None = None,
) -> Report:
    """Play ``role``'s session script against the device, judge the rules matching ``rules``. With
    ``leave`` = (seconds, callable or None) the suite then calls the callable (e.g. stops the device)
    and waits that long for its 'offline' state, to judge PR-020."""
    if role not in PLAYS:
        raise ValueError(f"no conformance suite for role {role!r} (suites: {', '.join(PLAYS)})")
    spec = BrokerSpec.parse(broker) if isinstance(broker, str) else broker
    chosen = select(role, rules)
    if not chosen:
        raise ValueError(f"no {role} rule matches {rules!r}")
    started = datetime.now(UTC)
    t0 = time.monotonic()
    watch = BrokerSpec.parse(observer) if isinstance(observer, str) else observer
    trace = await PLAYS[role](device_id, spec, scenario, speed=speed, timeout_s=timeout_s, leave=leave, observer=watch)
    trace.device_key = device_key
    report = Report(
        role,
        device_id,
        spec.url,
        started.isoformat(timespec="seconds"),
        time.monotonic() - t0,
        speed,
        trace.aborted,
        judge(trace, chosen),
        len(trace.messages),
    )
    if report_dir is not None:
        report.write(report_dir)
    return report
