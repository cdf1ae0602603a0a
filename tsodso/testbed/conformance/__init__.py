"""Conformance: does a device speak the contract? Rules with stable IDs (``rules``), the session
scripts that play the other roles against it (``session``), one check per rule (``checks``), and
the report (``report``). Reference devices to test against: ``testbed.emulate``."""

from tsodso.testbed.conformance.report import Report, RuleResult, run_suite
from tsodso.testbed.conformance.rules import RULES, Rule, select

__all__ = ["RULES", "Report", "Rule", "RuleResult", "run_suite", "select"]
