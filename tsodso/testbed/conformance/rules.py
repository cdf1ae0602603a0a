"""The normative rules of the contract, one stable ID each (``docs/conformance.md`` is generated from
this table: ``tsodso conformance --doc > docs/conformance.md``; a test keeps the two equal, and keeps
every rule bound to exactly one check in ``testbed.conformance.checks``).

IDs: ``<ROLE>-<AREA>-<NNN>``. Areas: EN envelope and schema, TP topics and delivery policy,
PR presence, RR request/response, PQ prequalification, SC schedules, FC forecasts, BD bids,
SP setpoints and activation, FX block activations, TM telemetry, MV merit order list validation,
EM emergencies, MK market clearing.
An ID is never reused for a different rule; a withdrawn rule keeps its ID out of use.
"""

import fnmatch
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    id: str
    title: str  # the normative sentence
    types: tuple[str, ...]  # message types it concerns ("*" = everything the device sends)
    source: str  # where the rule comes from

    @property
    def role(self) -> str:
        return self.id.split("-")[0].lower()


CONTRACT = "contract (tsodso/schemas/, contract/schemas/*.json)"
RIGHTS = "bilateral table (tsodso/schemas/rights.yaml; CS review Figs. 3-4, Birk et al. 2017 §3)"
POLICY = "delivery policy (tsodso/gateway/policy.py)"


def _common(role: str) -> list[Rule]:
    """Rules every device follows, whatever its role."""
    r = role.upper()
    return [
        Rule(
            f"{r}-EN-010",
            "Every message the device publishes is one UTF-8 JSON object {envelope, body} whose "
            "envelope and body validate against the contract's JSON Schemas.",
            ("*",),
            CONTRACT,
        ),
        Rule(
            f"{r}-EN-020",
            "The topic tsodso/v1/{role}/{id}/{type}/{role}/{id} names the envelope's sender (the "
            "device itself), its type and one of its recipients.",
            ("*",),
            "topic namespace (tsodso/schemas/topics.py)",
        ),
        Rule(
            f"{r}-EN-030",
            "The device sends only the message types the bilateral table allows its role, to the roles it allows.",
            ("*",),
            RIGHTS,
        ),
        Rule(
            f"{r}-EN-040",
            "Sequence numbers count per topic: on a QoS 1 topic each message carries the previous "
            "one's number + 1; on a QoS 0 topic they increase (a lost message leaves a gap).",
            ("*",),
            "envelope.sequence (tsodso/schemas/envelope.py)",
        ),
        Rule(
            f"{r}-EN-050",
            "A message id is never reused for a different message (a QoS 1 re-send repeats the same bytes).",
            ("*",),
            "envelope.message_id (tsodso/schemas/envelope.py)",
        ),
        Rule(
            f"{r}-EN-060",
            "The device signs every message it publishes: Ed25519 over the exact bytes of the "
            "message, appended as its last member 'signature' (docs/security.md); with --public-keys the suite "
            "verifies each. A device that does not sign at all is reported (SKIP): receivers that hold keys refuse it "
            "unless the scenario names it in security.unsigned.",
            ("*",),
            "identity (tsodso/schemas/signing.py, docs/security.md)",
        ),
        Rule(
            f"{r}-TP-010",
            "Each message goes out with its type's QoS, and (seen on MQTT 5, Retain As Published) "
            "with the retain flag only where the policy retains.",
            ("*",),
            POLICY,
        ),
        Rule(
            f"{r}-TP-020",
            "A message of a type that expires carries valid_until later than its created_at, so a "
            "late copy is recognised.",
            (
                "delta_setpoint",
                "telemetry",
                "energy_bid",
                "mol_validation",
                "curtailment_response",
                "heartbeat",
                "rejection",
            ),
            POLICY,
        ),
        Rule(
            f"{r}-PR-010",
            "On connecting, the device publishes a retained actor_state 'online' to all/all (its birth).",
            ("actor_state",),
            "presence (tsodso/gateway/client.py; Sparkplug-style birth)",
        ),
        Rule(
            f"{r}-PR-020",
            "When it goes, the device leaves a retained actor_state 'offline' (its MQTT will, or "
            "published on a clean exit); judged only when the device leaves during the session.",
            ("actor_state",),
            "presence (MQTT will)",
        ),
        Rule(
            f"{r}-RR-010",
            "Every answer carries the request's message_id as causation_id and the request's "
            "correlation_id (or its message_id when it had none).",
            _ANSWERS[role],
            "request/response (tsodso/schemas/envelope.py; MQTT 5 Correlation Data)",
        ),
        Rule(
            f"{r}-RR-020",
            "A heartbeat probe (a heartbeat with reply_to) is answered with a heartbeat on the "
            "reply_to topic within 1 s.",
            ("heartbeat",),
            "clock probes (tsodso/gateway/clocksync.py)",
        ),
    ]


_ANSWERS = {
    "tso": ("prequalification_result", "heartbeat"),
    "bsp": ("telemetry", "heartbeat"),
    "dso": ("prequalification_result", "mol_validation", "curtailment_response", "heartbeat"),
    "mo": ("heartbeat",),
}

RULES: list[Rule] = [
    *_common("bsp"),
    Rule(
        "BSP-PQ-010",
        "Before bidding, the device sends the TSO a prequalification_request naming every asset "
        "it bids with; a DN-connected asset names its DSO and connection bus.",
        ("prequalification_request",),
        "CS review Fig. 3 (prequalification)",
    ),
    Rule(
        "BSP-PQ-020",
        "Bids use only assets the TSO qualified, each within its validated capacity in the bid's direction.",
        ("energy_bid",),
        "CS review Fig. 3",
    ),
    Rule(
        "BSP-SC-010",
        "The device sends the TSO a day_ahead schedule with a series for every asset it bids with, "
        "starting no later than the ISP of its first bid, before that ISP.",
        ("schedule",),
        "Birk et al. 2017 §3 (schedules)",
    ),
    Rule(
        "BSP-BD-010",
        "Energy bids for an ISP arrive before that ISP starts (the TSO builds the merit order list "
        "at the start of each ISP).",
        ("energy_bid",),
        "CS review Fig. 4, §IV.A (offering)",
    ),
    Rule(
        "BSP-BD-020",
        "A bid's asset shares add up to its quantity (±0.001 MW), and its ISP start lies on the 15-minute grid.",
        ("energy_bid",),
        "CS review §IV.A (ISP 15 min)",
    ),
    Rule(
        "BSP-SP-010",
        "In steady cycles the delivered delta stays within [-10 %, +20 %] of the setpoint in force "
        "(telemetry of cycle k answers setpoint k-1; a cycle is steady when that setpoint is at least 0.5 MW and "
        "did not change in the cycle before).",
        ("delta_setpoint", "telemetry"),
        "CS review §IV.B ([-10 %, +20 %] tolerance)",
    ),
    Rule(
        "BSP-SP-020",
        "An expired setpoint (valid_until passed) is not followed: the delivered delta stays "
        "within the band of the last valid setpoint.",
        ("delta_setpoint",),
        "CS review §IV.B (4-s setpoints); delivery policy",
    ),
    Rule(
        "BSP-SP-030",
        "After an activation limit, the delivered delta of the bid stays at or below the limit "
        "(+20 %) once the bid's declared ramp rate could have reached it (plus two setpoint periods).",
        ("activation_limit", "telemetry"),
        "CS review §IV.B (the BSP cannot exceed the limit)",
    ),
    Rule(
        "BSP-SP-040",
        "After a termination (activation limit 0 MW) the delivered delta returns to 0 "
        "(±10 % of the activation before, at least ±0.05 MW) within the time its declared ramp needs "
        "(plus two setpoint periods).",
        ("activation_limit", "telemetry"),
        "CS review Fig. 4, §IV.B (termination signal → activation limit)",
    ),
    Rule(
        "BSP-TM-010",
        "For every valid setpoint the device sends telemetry of that cycle to the TSO, and to the "
        "DSO of each DN-connected asset, within one setpoint period (4 s); a setpoint that reached it "
        "after its validity and that it refused as expired (rejection notice) is owed none.",
        ("telemetry",),
        "CS review §IV.B (real-time information every 4 s)",
    ),
    Rule(
        "BSP-TM-020",
        "Telemetry to the TSO carries the cycle, delivered_delta_mw and one measurement per asset; "
        "telemetry to a DSO carries only that DSO's assets.",
        ("telemetry",),
        "CS review §IV.B; Birk et al. 2017 §3 (real-time data)",
    ),
    Rule(
        "BSP-FX-010",
        "During the ISP of a block activation (flex_activation from a DSO or a market operator), the "
        "measurements in the device's telemetry to the TSO add up to its day-ahead schedule plus the block (signed "
        "by its direction) plus its delivered aFRR delta, within ±5 % of the block (at least ±0.05 MW).",
        ("flex_activation", "telemetry", "schedule"),
        "CS review Table I (DSO and market flexibility outside aFRR)",
    ),
    *_common("dso"),
    Rule(
        "DSO-PQ-010",
        "A prequalification_forward is answered within 5 s with one verdict per forwarded asset, "
        "checked_by 'dso', validated capacities not above those asked, and a reason for every asset not "
        "qualified or reduced.",
        ("prequalification_forward", "prequalification_result"),
        "CS review Fig. 3 (DSO tests and validates DN assets)",
    ),
    Rule(
        "DSO-FC-010",
        "After the run starts, the device sends the TSO an interface_flow forecast that covers the next ISP.",
        ("forecast",),
        "Birk et al. 2017 §3 (forecasts at the interface)",
    ),
    Rule(
        "DSO-MV-010",
        "A merit_order_list is answered with a mol_validation for the same mol_id and iteration "
        "within 2 s (the TSO's validation timeout in the reference scenario).",
        ("merit_order_list", "mol_validation"),
        "CS review Fig. 4 (validated MOL returned)",
    ),
    Rule(
        "DSO-MV-020",
        "The validation has one verdict for every bid of the list with an asset in the device's "
        "grid, and names no bid that is not in the list.",
        ("mol_validation",),
        "CS review Fig. 4",
    ),
    Rule(
        "DSO-MV-030",
        "Every verdict is consistent: 0 <= lower bound <= upper bound <= offered quantity; a "
        "rejected bid has upper bound 0; a limited bid names its limiting element.",
        ("mol_validation",),
        "CS review Fig. 4 (clear invalid bids or update their bounds)",
    ),
    Rule(
        "DSO-EM-010",
        "A curtailment_request is answered within 5 s by a curtailment_response whose status "
        "matches accepted_mw (accepted: all, partial: some, refused: 0) with a reason when not all is accepted.",
        ("curtailment_request", "curtailment_response"),
        "Birk et al. 2017 §3 (emergencies: curtailment)",
    ),
]

RULES += [
    *_common("tso"),
    Rule(
        "TSO-PQ-010",
        "A prequalification_request is answered within 10 s with one verdict per asset; DN assets "
        "are first forwarded to their DSO (prequalification_forward) and their verdicts are not above the DSO's.",
        ("prequalification_request", "prequalification_forward", "prequalification_result"),
        "CS review Fig. 3 (DN assets validated by the DSO)",
    ),
    Rule(
        "TSO-SC-010",
        "The series of DN assets in a BSP's schedule are passed to their DSO as a 'final' schedule.",
        ("schedule",),
        "Birk et al. 2017 §3 (final schedules TSO → DSO)",
    ),
    Rule(
        "TSO-MV-010",
        "Before a bid with an asset in a DSO's grid is accepted, that DSO gets a merit_order_list "
        "with the bid for its ISP, with reply_to.",
        ("merit_order_list", "offer_acceptance"),
        "CS review Fig. 4 (hybrid coordination: DSO validates the MOL)",
    ),
    Rule(
        "TSO-MV-020",
        "No setpoint activates a bid beyond the upper bound its DSO validated.",
        ("mol_validation", "delta_setpoint"),
        "CS review §IV.B (the BSP cannot exceed the DSO's limit)",
    ),
    Rule(
        "TSO-OA-010",
        "A BSP gets an offer_acceptance naming a bid before the first non-zero setpoint for it.",
        ("offer_acceptance", "delta_setpoint"),
        "CS review Fig. 4 (accepted offers confirmed to the BSP)",
    ),
    Rule(
        "TSO-SP-010",
        "Delta setpoints come every setpoint period (4 s): consecutive cycle numbers, instants one "
        "period apart, delta_mw the sum of bid_deltas_mw.",
        ("delta_setpoint",),
        "CS review §IV.B (minimum resolution 4 s)",
    ),
    Rule(
        "TSO-SP-020",
        "A setpoint expires within its cycle: valid_until - created_at is at most one setpoint "
        "period (wall time at the session's speed).",
        ("delta_setpoint",),
        "CS review §IV.B; delivery policy",
    ),
    Rule(
        "TSO-SP-030",
        "A bid's setpoint rises no faster than the bid's declared ramp rate (it may drop at once to a new limit).",
        ("delta_setpoint", "energy_bid"),
        "CS review §IV.B (1 MW per 30 s at the bid's ramp)",
    ),
    Rule(
        "TSO-SP-040",
        "After a DSO's termination_signal the BSP gets an activation_limit for the bid within one "
        "setpoint period, and no later setpoint for the bid exceeds the limit.",
        ("termination_signal", "activation_limit", "delta_setpoint"),
        "CS review Fig. 4, §IV.B",
    ),
    Rule(
        "TSO-ST-010",
        "For an ISP with activation the BSP gets a settlement_report whose energy per bid matches "
        "the setpoints sent (±2 %).",
        ("settlement_report",),
        "CS review §IV.A (settlement per ISP)",
    ),
]

MARKET = "CS review Table I, scheme 6 (integrated flexibility market)"
RULES += [
    *_common("mo"),
    Rule(
        "MO-MV-010",
        "Before an ISP starts, every DSO with an asset in a bid for that ISP gets a merit_order_list, "
        "with reply_to, holding exactly the bids with an asset in its grid.",
        ("merit_order_list",),
        f"{MARKET}; CS review Fig. 4 (the DSO validates what reaches its grid)",
    ),
    Rule(
        "MO-MK-010",
        "No bid is awarded more, over all buyers, than the upper bound its DSO validated (its offered "
        "quantity when no DSO had to validate it).",
        ("market_result", "mol_validation"),
        MARKET,
    ),
    Rule(
        "MO-MK-020",
        "An award serves a need that was stated for the ISP, for that need's buyer, in its direction, "
        "from a bid priced at or below the need's willingness to pay; no need gets more than its quantity.",
        ("market_result", "flexibility_need"),
        MARKET,
    ),
    Rule(
        "MO-MK-030",
        "Willingness to pay decides: a need is not left short while a bid it could pay for stays "
        "unused or goes to a need that pays less, and no need pays more for a bid than a less willing need of "
        "the same direction pays for one.",
        ("market_result", "flexibility_need"),
        f"{MARKET} (clears by willingness to pay)",
    ),
    Rule(
        "MO-MK-040",
        "Before the ISP starts, the TSO and every party that stated a need get a market_result for "
        "the ISP with exactly their own awards (none when they got nothing).",
        ("market_result",),
        MARKET,
    ),
    Rule(
        "MO-MK-050",
        "Before the ISP starts, every BSP with bids for it gets an offer_acceptance: each awarded bid "
        "accepted with its awarded MW (summed over buyers) as upper bound, every other bid rejected.",
        ("offer_acceptance",),
        "CS review Fig. 4 (accepted offers confirmed to the BSP)",
    ),
    Rule(
        "MO-MK-060",
        "A commercial party's award is activated for it: a flex_activation of the bid, with the "
        "awarded MW and price, to the BSP, the TSO and the DSO of each DN asset.",
        ("flex_activation",),
        f"{MARKET} (commercial parties buy flexibility)",
    ),
]

BY_ID = {r.id: r for r in RULES}
ROLES_WITH_SUITES = ("bsp", "dso", "tso", "mo")


def select(role: str, pattern: str = "*") -> list[Rule]:
    """The rules of ``role`` whose ID matches the shell-style ``pattern`` (e.g. 'BSP-SP-*')."""
    return [r for r in RULES if r.role == role and fnmatch.fnmatch(r.id, pattern.upper())]


def markdown() -> str:
    """docs/conformance.md."""
    from tsodso.testbed.conformance.session import (
        SESSION_SCRIPTS,  # the scripts sit with the code that plays them
    )

    out = [
        "# Conformance rules",
        "",
        "Generated by `tsodso conformance --doc` from `tsodso/testbed/conformance/rules.py`; do not edit by hand",
        "(a test fails when this file, the rules and the checks disagree).",
        "",
        "Run a suite against a device that is connected to a broker:",
        "",
        "    tsodso conformance --role bsp --device-id bsp1 --broker mqtt://host:1883 [--rules 'BSP-SP-*'] [--report DIR]",
        "",
        "The testbed plays every other role over the broker, runs the session script below, and prints one",
        "line per rule: PASS, FAIL or SKIP with the evidence (the offending message, the measured value and",
        "the bound). It exits 1 when a rule fails and writes `conformance.json` and `conformance.html`.",
        "A plain MQTT observer sees every byte the device publishes, including what a gateway would refuse.",
        "Reference devices: `tsodso emulate bsp|dso|tso|mo --device-id ID --broker URL [--fault MODE]`.",
        "",
    ]
    for role in ROLES_WITH_SUITES:
        out += [
            f"## {role.upper()}",
            "",
            SESSION_SCRIPTS[role].strip(),
            "",
            "| ID | Rule | Messages | Source |",
            "| --- | --- | --- | --- |",
        ]
        for r in select(role):
            out.append(f"| {r.id} | {r.title} | {', '.join(r.types)} | {r.source} |")
        out.append("")
    return "\n".join(out)
