"""One check per rule of ``testbed.conformance.rules``: each judges a session's :class:`Trace` and
returns an :class:`Outcome` with its evidence (the offending message, the measured value, the bound).
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from tsodso.actors import rules, schemes
from tsodso.actors.rules import ISP, isp_of
from tsodso.gateway.policy import DELIVERY_POLICY
from tsodso.schemas import signing
from tsodso.schemas.codes import BidStatus, Connection, Direction
from tsodso.schemas.envelope import Party
from tsodso.schemas.rights import default_rights
from tsodso.testbed.capture import Captured
from tsodso.testbed.conformance.session import Probe, Trace


@dataclass
class Outcome:
    status: str  # "pass" | "fail" | "skip"
    evidence: str
    value: str | None = None
    bound: str | None = None


def ok(evidence: str, value: str | None = None, bound: str | None = None) -> Outcome:
    return Outcome("pass", evidence, value, bound)


def fail(evidence: str, value: str | None = None, bound: str | None = None) -> Outcome:
    return Outcome("fail", evidence, value, bound)


def skip(evidence: str) -> Outcome:
    return Outcome("skip", evidence)


Check = Callable[[Trace], Outcome]
CHECKS: dict[str, Check] = {}


def check(*rule_ids: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        for rule_id in rule_ids:
            if rule_id in CHECKS:
                raise ValueError(f"two checks for {rule_id}")
            CHECKS[rule_id] = fn
        return fn

    return register


def show(msg: Captured, limit: int = 300) -> str:
    """A message as evidence: topic and (the start of) its payload."""
    text = msg.payload.decode(errors="replace")
    return f"{msg.topic} {text[:limit]}{'…' if len(text) > limit else ''}"


def _stored(t: Trace, m: Captured) -> bool:
    """A retained message the broker handed over when the recorder subscribed (it arrives in the first
    second), i.e. state from before the session, not something the device did during it."""
    return m.retain and m.t_us / 1e6 < t.recording_since + 1.0


def _mine(t: Trace) -> list[Captured]:
    """The device's valid messages, its will (sequence 0) left out of sequence checks."""
    return [m for m in t.valid if m.envelope.sender == t.device]


# --- envelope, topics, delivery policy, presence (every role) ----------------------------------


@check("BSP-EN-010", "DSO-EN-010", "TSO-EN-010", "MO-EN-010")
def schema_valid(t: Trace) -> Outcome:
    if not t.messages:
        return skip("the device published nothing")
    bad = [m for m in t.messages if m.error and not m.error.startswith("topic_mismatch")]
    if bad:
        return fail(f"{bad[0].error} in {show(bad[0])}", f"{len(bad)} invalid", f"0 of {len(t.messages)}")
    return ok(f"{len(t.messages)} messages, all valid", str(len(t.messages)))


@check("BSP-EN-020", "DSO-EN-020", "TSO-EN-020", "MO-EN-020")
def topic_matches(t: Trace) -> Outcome:
    bad = [m for m in t.messages if m.error and m.error.startswith("topic_mismatch")]
    bad += [m for m in t.valid if m.envelope.sender != t.device]
    if bad:
        return fail(f"{bad[0].error or f'sender {bad[0].envelope.sender} is not {t.device}'}: {show(bad[0])}")
    return ok(f"{len(t.valid)} topics name sender, type and recipient")


@check("BSP-EN-030", "DSO-EN-030", "TSO-EN-030", "MO-EN-030")
def rights(t: Trace) -> Outcome:
    table = default_rights()
    for m in _mine(t):
        for r in m.envelope.recipients:
            if not table.may_send(m.envelope.sender, m.envelope.type, r):
                return fail(f"{t.role} may not send {m.envelope.type} to {r.role}: {show(m)}")
    return ok(f"{len(_mine(t))} messages within the bilateral table")


@check("BSP-EN-040", "DSO-EN-040", "TSO-EN-040", "MO-EN-040")
def sequences(t: Trace) -> Outcome:
    last: dict[str, int] = {}
    seen = 0
    for m in _mine(t):
        seq = m.envelope.sequence
        if seq == 0 and m.envelope.type == "actor_state":
            continue  # the will is sequence 0
        if _stored(t, m):
            continue  # the broker's retained copy from before the session (perhaps of an earlier run)
        prev = last.get(m.topic)
        last[m.topic] = seq
        if prev is None:
            continue
        seen += 1
        qos1 = DELIVERY_POLICY[m.envelope.type].qos == 1
        if seq == prev and qos1:
            continue  # a QoS 1 re-send (EN-050 judges whether it is the same message)
        if (qos1 and seq != prev + 1) or seq <= prev:
            return fail(f"on {m.topic} sequence {seq} follows {prev}: {show(m, 120)}", str(seq), f"{prev + 1}")
    if not seen:
        return skip("no topic carried two messages")
    return ok(f"{seen} consecutive pairs checked on {len(last)} topics")


@check("BSP-EN-050", "DSO-EN-050", "TSO-EN-050", "MO-EN-050")
def unique_ids(t: Trace) -> Outcome:
    by_id: dict[str, bytes] = {}
    for m in _mine(t):
        key = str(m.envelope.message_id)
        if key in by_id and by_id[key] != m.payload:
            return fail(f"message id {key} used for two different messages: {show(m, 160)}")
        by_id[key] = m.payload
    return ok(f"{len(by_id)} distinct message ids")


@check("BSP-EN-060", "DSO-EN-060", "TSO-EN-060", "MO-EN-060")
def signatures(t: Trace) -> Outcome:
    mine = [m for m in _mine(t) if not _stored(t, m)]
    signed: list[tuple[Captured, bytes, bytes]] = []
    unsigned: list[tuple[Captured, bytes, None]] = []
    for m in mine:
        try:
            message, signature = signing.split(m.payload)
        except ValueError as exc:
            return fail(f"malformed signature ({exc}): {show(m, 120)}")
        if signature is not None:
            signed.append((m, message, signature))
        else:
            unsigned.append((m, message, None))
    if not mine:
        return skip("the device published nothing to judge")
    if not signed:
        return skip(
            f"the device does not sign ({len(unsigned)} messages unsigned): receivers that hold keys refuse it "
            "unless the scenario lets it send unsigned (security.unsigned)"
        )
    if unsigned:
        m = unsigned[0][0]
        return fail(
            f"{len(unsigned)} of {len(mine)} messages unsigned, e.g. {show(m, 120)}", f"{len(unsigned)} unsigned", "0"
        )
    if t.device_key is None:
        return ok(f"{len(signed)} messages signed (not verified: give --public-keys to verify them)")
    for m, signed_bytes, sig in signed:
        if not signing.verify(signed_bytes, sig, t.device_key):
            return fail(f"signature does not verify with the device's public key: {show(m, 120)}")
    return ok(f"{len(signed)} messages signed, every signature verified with the device's public key")


@check("BSP-TP-010", "DSO-TP-010", "TSO-TP-010", "MO-TP-010")
def delivery_policy(t: Trace) -> Outcome:
    retain_seen = t.broker.protocol == 5
    for m in _mine(t):
        policy = DELIVERY_POLICY[m.envelope.type]
        if m.qos != policy.qos and (t.qos0_faithful or policy.qos == 1):
            return fail(f"{m.envelope.type} sent with QoS {m.qos}: {show(m, 120)}", f"QoS {m.qos}", f"QoS {policy.qos}")
        if retain_seen and m.retain != policy.retain and m.envelope.type != "actor_state":
            return fail(
                f"{m.envelope.type} sent with retain={m.retain}: {show(m, 120)}",
                f"retain {m.retain}",
                f"retain {policy.retain}",
            )
    how = "QoS and retain (MQTT 5 observer)" if retain_seen else "QoS (retain not visible on MQTT 3.1.1)"
    if not t.qos0_faithful:
        how += "; this broker delivers QoS 0 as QoS 1, so only QoS 1 types were judged"
    return ok(f"{len(_mine(t))} messages: {how} as the policy says")


@check("BSP-TP-020", "DSO-TP-020", "TSO-TP-020", "MO-TP-020")
def expiry(t: Trace) -> Outcome:
    n = 0
    for m in _mine(t):
        if DELIVERY_POLICY[m.envelope.type].expiry_s is None:
            continue
        n += 1
        env = m.envelope
        if env.valid_until is None or env.valid_until <= env.created_at:
            return fail(
                f"{env.type} without a valid_until after created_at: {show(m, 200)}",
                str(env.valid_until),
                f"> {env.created_at.isoformat()}",
            )
    return ok(f"{n} expiring messages carry valid_until") if n else skip("no message of an expiring type")


@check("BSP-PR-010", "DSO-PR-010", "TSO-PR-010", "MO-PR-010")
def birth(t: Trace) -> Outcome:
    births = [m for m in _mine(t) if m.envelope.type == "actor_state" and m.body.status == "online"]
    if not births:
        return fail(f"no actor_state 'online' from {t.device} (looked for the retained copy on subscribe)")
    m = births[0]
    if not (m.retain or t.birth_retained):
        return fail(
            f"the broker holds no retained birth for a new subscriber: {show(m, 160)}", "not retained", "retained"
        )
    if Party(role="all", id="all") not in m.envelope.recipients:
        return fail(f"the birth is not addressed to all/all: {show(m, 160)}")
    return ok(f"retained birth on {m.topic}")


@check("BSP-PR-020", "DSO-PR-020", "TSO-PR-020", "MO-PR-020")
def death(t: Trace) -> Outcome:
    # an 'offline' after the suite made the device leave is its death, even in the recording's first
    # second (a short session); before that, a retained copy from earlier is not
    deaths = [
        m
        for m in _mine(t)
        if m.envelope.type == "actor_state"
        and m.body.status == "offline"
        and ((t.left_at_us is not None and m.t_us >= t.left_at_us) or not _stored(t, m))
    ]
    if not deaths:
        if t.watched_leaving:
            return fail(f"no actor_state 'offline' within {t.watched_leaving:g} s of the device leaving")
        return skip("the device stayed connected (judge it with --wait-offline S and stop the device)")
    m = deaths[-1]
    if not (m.retain or t.death_retained):
        return fail(f"the broker holds no retained offline state for a new subscriber: {show(m, 160)}")
    return ok(f"retained offline state on {m.topic}")


@check("BSP-RR-010", "DSO-RR-010", "TSO-RR-010", "MO-RR-010")
def correlation(t: Trace) -> Outcome:
    pairs = []  # (request id, request correlation, answer)
    for p in t.probes:
        a = t.answer(p)
        if a is not None:
            pairs.append((p.envelope.message_id, p.envelope.correlation_id or p.envelope.message_id, a, p.name))
    for k, tele in sorted(t.telemetry(t.tso).items()):
        sp = t.setpoints.get(k)
        if sp is not None and not sp.expired:
            pairs.append(
                (sp.envelope.message_id, sp.envelope.correlation_id or sp.envelope.message_id, tele, f"setpoint {k}")
            )
    if not pairs:
        return skip("no answer to judge")
    for req_id, corr, a, name in pairs:
        env = a.envelope
        if env.causation_id != req_id:
            return fail(
                f"answer to {name} has causation_id {env.causation_id}: {show(a, 200)}",
                str(env.causation_id),
                str(req_id),
            )
        if env.correlation_id != corr:
            return fail(
                f"answer to {name} has correlation_id {env.correlation_id}: {show(a, 200)}",
                str(env.correlation_id),
                str(corr),
            )
    return ok(f"{len(pairs)} answers carry causation and correlation", str(len(pairs)))


@check("BSP-RR-020", "DSO-RR-020", "TSO-RR-020", "MO-RR-020")
def heartbeat(t: Trace) -> Outcome:
    probe = next((p for p in t.probes if p.name == "heartbeat"), None)
    if probe is None:
        return skip("the session ended before the heartbeat probe")
    a = t.answer(probe)
    if a is None:
        return fail(f"no heartbeat answer to the probe sent at {probe.envelope.created_at:%H:%M:%S.%f}")
    took = (a.t_us - probe.sent_us) / 1e6
    if a.topic != probe.envelope.reply_to:
        return fail(f"answer on {a.topic}, not on reply_to {probe.envelope.reply_to}")
    if took > probe.within_s:
        return fail(f"answered after {took:.3f} s", f"{took:.3f} s", f"<= {probe.within_s:g} s")
    return ok(f"answered on reply_to after {took * 1000:.1f} ms", f"{took * 1000:.1f} ms", f"<= {probe.within_s:g} s")


# --- BSP ---------------------------------------------------------------------------------------


@check("BSP-PQ-010")
def prequalification_request(t: Trace) -> Outcome:
    reqs = t.of_type("prequalification_request", "tso")
    bids = t.of_type("energy_bid")
    if not reqs:
        return fail("no valid prequalification_request to the TSO")
    if bids and bids[0].t_us < reqs[0].t_us:
        return fail(f"a bid came before the prequalification request: {show(bids[0], 160)}")
    asked = {a.asset_id: a for r in reqs for a in r.body.assets}
    for a in asked.values():
        if a.connection == Connection.DN and (not a.dso_id or not a.connection_bus):
            return fail(f"DN asset {a.asset_id} without its DSO or connection bus: {show(reqs[0], 300)}")
    used = {x.asset_id for b in bids for x in b.body.assets}
    if missing := used - set(asked):
        return fail(f"bids use assets never submitted for prequalification: {sorted(missing)}")
    return ok(f"{len(asked)} assets submitted before bidding", str(len(asked)))


@check("BSP-PQ-020")
def bids_within_qualification(t: Trace) -> Outcome:
    if not t.bids:
        return skip("no valid bid")
    for b in t.bids:
        for x in b.body.assets:
            a = t.prequal_assets.get(x.asset_id)
            if a is None:
                return fail(f"bid {b.body.bid_id} uses {x.asset_id}, not qualified")
            cap = a.capacity_up_mw if b.body.direction == Direction.UP else a.capacity_down_mw
            if x.share_mw > cap + 1e-6:
                return fail(
                    f"bid {b.body.bid_id}: {x.asset_id} offers {x.share_mw} MW, qualified for {cap} MW",
                    f"{x.share_mw} MW",
                    f"<= {cap} MW",
                )
    return ok(f"{len(t.bids)} bids within the qualified assets and capacities")


@check("BSP-SC-010")
def schedule(t: Trace) -> Outcome:
    schedules = [m for m in t.of_type("schedule", "tso") if m.body.kind == "day_ahead"]
    if not schedules:
        return fail("no day_ahead schedule to the TSO")
    if not t.bids:
        return skip("no bid to compare the schedule with")
    first = min(t.bids, key=lambda b: b.body.isp_start).body
    s = schedules[0]
    covered = {x.asset_id for m in schedules for x in m.body.series}
    used = {x.asset_id for b in t.bids for x in b.body.assets}
    if missing := used - covered:
        return fail(f"no schedule series for {sorted(missing)}")
    if s.body.start > first.isp_start:
        return fail(f"schedule starts {s.body.start:%H:%M}, after the first bid's ISP {first.isp_start:%H:%M}")
    if t.isp0 and s.t_us / 1e6 > _isp_wall(t, first.isp_start):
        return fail("schedule arrived after the ISP of the first bid had started")
    return ok(f"day_ahead schedule from {s.body.start:%H:%M} covers {len(covered)} assets")


def _isp_wall(t: Trace, isp) -> float:
    """Wall-clock epoch seconds at which the scenario instant ``isp`` happened in the session."""
    return t.run_wall_origin + (isp - t.run_start).total_seconds() / t.speed


@check("BSP-BD-010")
def gate_closure(t: Trace) -> Outcome:
    if not t.bids:
        return fail("no valid energy bid") if t.isp0 else skip("the session did not start")
    late = [b for b in t.bids if b.received_us / 1e6 > _isp_wall(t, b.body.isp_start)]
    if late:
        b = late[0]
        after = b.received_us / 1e6 - _isp_wall(t, b.body.isp_start)
        return fail(
            f"bid {b.body.bid_id} for ISP {b.body.isp_start:%H:%M} arrived {after * t.speed:.1f} s "
            f"(scenario) after the ISP started",
            f"+{after * t.speed:.1f} s",
            "<= 0 s",
        )
    return ok(f"{len(t.bids)} bids before their ISP")


@check("BSP-BD-020")
def bid_consistency(t: Trace) -> Outcome:
    if not t.bids:
        return skip("no valid bid")
    for b in t.bids:
        total = sum(x.share_mw for x in b.body.assets)
        if abs(total - b.body.quantity_mw) > 1e-3:
            return fail(
                f"bid {b.body.bid_id}: shares add up to {total} MW, quantity {b.body.quantity_mw} MW",
                f"{total} MW",
                f"{b.body.quantity_mw} MW",
            )
        s = b.body.isp_start
        if isp_of(s) != s:
            return fail(f"bid {b.body.bid_id}: ISP start {s.isoformat()} is not on the 15-min grid")
    return ok(f"{len(t.bids)} bids consistent")


def _delivered(t: Trace) -> dict[int, float]:
    return {
        k: m.body.delivered_delta_mw for k, m in t.telemetry(t.tso).items() if m.body.delivered_delta_mw is not None
    }


def _activation(t: Trace) -> str | None:
    if t.aborted or not t.isp0:
        return "the session did not start"
    if t.no_activation:
        return t.no_activation
    return None


@check("BSP-SP-010")
def follows_setpoints(t: Trace) -> Outcome:
    if why := _activation(t):
        return skip(why)
    got = _delivered(t)
    end = t.limit_cycle if t.limit_cycle is not None else max(t.setpoints) + 1
    checked, worst = 0, None
    for k in range(2, end + 1):
        sp, before = t.in_force(k - 1), t.in_force(k - 2)
        if sp is None or before is None or abs(sp - before) > 1e-9 or sp < rules.STEADY_MIN_MW or k not in got:
            continue
        checked += 1
        lo, hi = rules.band_mw(sp)
        if not rules.within_band(sp, got[k], slack_mw=1e-9):
            return fail(
                f"cycle {k}: delivered {got[k]:.3f} MW for a setpoint of {sp:.3f} MW: {show(t.telemetry(t.tso)[k], 160)}",
                f"{got[k]:.3f} MW",
                f"[{lo:.3f}, {hi:.3f}] MW",
            )
        dev = got[k] / sp - 1
        worst = dev if worst is None or abs(dev) > abs(worst) else worst
    if not checked or worst is None:
        return skip("no steady cycle with telemetry")
    low, high = (100 * x for x in rules.DELIVERY_BAND)
    return ok(
        f"{checked} steady cycles within the band", f"worst {worst * 100:+.1f} %", f"[{low:+.0f} %, {high:+.0f} %]"
    )


@check("BSP-SP-020")
def ignores_expired(t: Trace) -> Outcome:
    if why := _activation(t):
        return skip(why)
    expired = next((sp for sp in t.setpoints.values() if sp.expired), None)
    if expired is None:
        return skip("the session ended before the expired setpoint")
    got = _delivered(t)
    window = [k for k in range(expired.cycle + 1, expired.cycle + 6) if k in got]
    if not window:
        return skip(f"no telemetry in cycles {expired.cycle + 1}..{expired.cycle + 5} (see BSP-TM-010)")
    bound = rules.band_mw(t.hold_target_mw)[1] + 0.05
    for k in window:
        if got[k] > bound:
            return fail(
                f"cycle {k}: delivered {got[k]:.3f} MW after an expired setpoint of {expired.target_mw} MW "
                f"(in force: {t.hold_target_mw:.3f} MW)",
                f"{got[k]:.3f} MW",
                f"<= {bound:.3f} MW",
            )
    refused = [r for r in t.rejections if r.body.rejected_message_id == str(expired.envelope.message_id)]
    note = f"; the device answered with a rejection ({refused[0].body.code})" if refused else ""
    return ok(
        f"cycles {window[0]}..{window[-1]} stayed at the setpoint in force{note}",
        f"max {max(got[k] for k in window):.3f} MW",
        f"<= {bound:.3f} MW",
    )


def _limited(t: Trace, cycles: range, bound: float, what: str) -> Outcome:
    got = _delivered(t)
    window = [k for k in cycles if k in got]
    if not window:
        return skip(f"no telemetry in cycles {cycles.start}..{cycles.stop - 1} (see BSP-TM-010)")
    for k in window:
        if abs(got[k]) > bound:
            return fail(
                f"cycle {k}: delivered {got[k]:.3f} MW after the {what}", f"{got[k]:.3f} MW", f"<= {bound:.3f} MW"
            )
    return ok(
        f"cycles {window[0]}..{window[-1]} within the {what}",
        f"max {max(abs(got[k]) for k in window):.3f} MW",
        f"<= {bound:.3f} MW",
    )


@check("BSP-SP-030")
def honours_limit(t: Trace) -> Outcome:
    if why := _activation(t):
        return skip(why)
    if t.limit_cycle is None or t.limit_mw is None or not t.limit_check:
        return skip("the session ended before the activation limit")
    return _limited(t, t.limit_check, rules.band_mw(t.limit_mw)[1] + 1e-6, f"limit of {t.limit_mw:.3f} MW")


@check("BSP-SP-040")
def honours_termination(t: Trace) -> Outcome:
    if why := _activation(t):
        return skip(why)
    if t.termination_cycle is None or not t.termination_check:
        return skip("the session ended before the termination")
    return _limited(t, t.termination_check, max(0.05, 0.1 * t.hold_target_mw), "termination")


@check("BSP-TM-010")
def telemetry_every_cycle(t: Trace) -> Outcome:
    if why := _activation(t):
        return skip(why)
    wall_period = t.period_s / t.speed
    parties = [t.tso] + [Party(role="dso", id=d) for d in sorted(t.dn_dsos)]
    # a setpoint that reached the device after its validity (a busy host, a slow network) is rightly
    # refused, with a rejection notice saying so after the setpoint expired: no telemetry is owed
    arrived_expired = {r.body.rejected_message_id for r in t.rejections if r.body.code == "expired"}
    refused_late = {
        k
        for k, sp in t.setpoints.items()
        if str(sp.envelope.message_id) in arrived_expired
        and sp.envelope.valid_until is not None
        and next(
            r.envelope.created_at for r in t.rejections if r.body.rejected_message_id == str(sp.envelope.message_id)
        )
        >= sp.envelope.valid_until
    }
    checked = 0
    for party in parties:
        tele = t.telemetry(party)
        for k, sp in sorted(t.setpoints.items()):
            if sp.expired or (k in refused_late and k not in tele):
                continue
            checked += 1
            m = tele.get(k)
            if m is None:
                return fail(f"no telemetry of cycle {k} to {party}", "missing", "every cycle")
            late = (m.t_us - sp.sent_us) / 1e6
            if late > wall_period:
                return fail(
                    f"telemetry of cycle {k} to {party} came {late:.3f} s after its setpoint",
                    f"{late:.3f} s",
                    f"<= {wall_period:.3f} s",
                )
    note = f"; {len(refused_late)} setpoints arrived expired and were refused as such" if refused_late else ""
    return ok(f"{checked} cycle reports to {', '.join(map(str, parties))}{note}", str(checked))


@check("BSP-TM-020")
def telemetry_content(t: Trace) -> Outcome:
    if why := _activation(t):
        return skip(why)
    assets = set(t.prequal_assets)
    n = 0
    for m in t.of_type("telemetry"):
        n += 1
        to = m.envelope.recipients[0]
        ids = {x.resource_id for x in m.body.measurements}
        if to == t.tso:
            if m.body.delivered_delta_mw is None or m.body.cycle is None:
                return fail(f"telemetry to the TSO without cycle or delivered_delta_mw: {show(m, 200)}")
            if missing := assets - ids:
                return fail(f"telemetry to the TSO lacks measurements of {sorted(missing)}: {show(m, 200)}")
        elif to.role == "dso":
            others = {i for i in ids if i in t.prequal_assets and t.prequal_assets[i].dso_id != to.id}
            if others:
                return fail(f"telemetry to {to} carries assets of other grids {sorted(others)}")
    return ok(f"{n} telemetry messages complete") if n else skip("no telemetry")


@check("BSP-FX-010")
def follows_block(t: Trace) -> Outcome:
    if why := _activation(t):
        return skip(why)
    if t.block is None:
        return skip(t.no_block or "no block activation was sent")
    block, sent_us = t.block
    schedules = [m for m in t.of_type("schedule", "tso") if m.body.kind == "day_ahead"]
    if not schedules:
        return skip("no day_ahead schedule to compare the measurements with (BSP-SC-010)")
    planned: dict[str, float] = {}
    for m in schedules:
        step = round((block.isp_start - m.body.start).total_seconds() / ISP.total_seconds())
        for x in m.body.series:
            if step >= 0:
                planned[x.asset_id] = x.p_mw[min(step, len(x.p_mw) - 1)]
    want = schemes.sign(block.direction) * block.activated_mw
    tol = max(0.05, 0.05 * block.activated_mw)
    n = 0
    for k, m in sorted(t.telemetry(t.tso).items()):
        if m.t_us <= sent_us or m.body.delivered_delta_mw is None or isp_of(m.body.instant) != block.isp_start:
            continue
        n += 1
        moved = sum(x.p_mw - planned.get(x.resource_id, 0.0) for x in m.body.measurements) - m.body.delivered_delta_mw
        if abs(moved - want) > tol:
            return fail(
                f"cycle {k}: measurements - schedule - delivered delta = {moved:+.3f} MW, the block of "
                f"{block.bid_id} is {want:+.3f} MW: {show(m, 200)}",
                f"{moved:+.3f} MW",
                f"{want:+.3f} ± {tol:.2f} MW",
            )
    if not n:
        return fail(f"no telemetry to the TSO after the block activation of {block.bid_id}")
    return ok(f"{n} telemetry cycles show the {want:+.2f} MW block of {block.bid_id}", str(n))


# --- DSO ---------------------------------------------------------------------------------------


def _probe(t: Trace, name: str) -> Probe | None:
    return next((p for p in t.probes if p.name == name), None)


def _probe_sent(t: Trace, name: str) -> Probe:
    """The probe ``name``, once ``_answered`` has found its answer (so it was sent)."""
    p = _probe(t, name)
    assert p is not None, name
    return p


def _answered(t: Trace, name: str) -> tuple[Outcome | None, Captured | None]:
    if t.aborted and not t.probes:
        return skip(t.aborted), None
    p = _probe(t, name)
    if p is None:
        return skip(f"the session ended before the {name} request"), None
    a = t.answer(p)
    if a is None:
        return fail(f"no valid {p.answer_type} to the {name} request", "none", f"<= {p.within_s:g} s"), None
    took = (a.t_us - p.sent_us) / 1e6
    if took > p.within_s:
        return fail(f"{p.answer_type} came after {took:.3f} s", f"{took:.3f} s", f"<= {p.within_s:g} s"), a
    return None, a


def _prequalification_verdicts(t: Trace, verb: str):
    """(failure or None, the answer, assets asked by id, verdicts by asset id): one verdict per asset."""
    out, a = _answered(t, "prequalification")
    if out:
        return out, a, {}, {}
    assert a is not None  # answered
    asked = {x.asset_id: x for x in _probe_sent(t, "prequalification").body.assets}
    verdicts = {v.asset_id: v for v in a.body.verdicts}
    if set(verdicts) != set(asked):
        return fail(f"verdicts for {sorted(verdicts)}, {verb} {sorted(asked)}"), a, asked, verdicts
    return None, a, asked, verdicts


@check("DSO-PQ-010")
def prequalification_answer(t: Trace) -> Outcome:
    out, a, asked, verdicts = _prequalification_verdicts(t, "forwarded")
    if out:
        return out
    for v in verdicts.values():
        x = asked[v.asset_id]
        if v.checked_by != "dso":
            return fail(f"{v.asset_id}: checked_by {v.checked_by!r}", v.checked_by, "dso")
        if (
            v.validated_capacity_up_mw > x.capacity_up_mw + 1e-6
            or v.validated_capacity_down_mw > x.capacity_down_mw + 1e-6
        ):
            return fail(f"{v.asset_id}: validated above what was asked")
        reduced = (
            v.validated_capacity_up_mw < x.capacity_up_mw - 1e-6
            or v.validated_capacity_down_mw < x.capacity_down_mw - 1e-6
        )
        if (not v.qualified or reduced) and not v.reason:
            return fail(f"{v.asset_id}: not qualified or reduced without a reason")
    took = (a.t_us - _probe_sent(t, "prequalification").sent_us) / 1000
    return ok(f"{len(verdicts)} verdicts in {took:.1f} ms", f"{took:.1f} ms", "<= 5 s")


@check("DSO-FC-010")
def forecast(t: Trace) -> Outcome:
    if t.aborted and not t.isp0:
        return skip(t.aborted)
    fcs = [m for m in t.of_type("forecast", "tso") if m.body.kind == "interface_flow"]
    if not fcs:
        return fail("no interface_flow forecast to the TSO")
    f = fcs[0].body
    steps = {"PT15M": 900, "PT4S": 4, "PT1M": 60, "PT1H": 3600}.get(str(f.resolution), 900)
    end = f.start.timestamp() + steps * len(f.p_mw)
    if t.isp0 and not (f.start <= t.isp0 and end >= t.isp0.timestamp() + 900):
        return fail(f"forecast from {f.start:%H:%M}, {len(f.p_mw)} steps, does not cover ISP {t.isp0:%H:%M}")
    return ok(f"interface_flow forecast from {f.start:%H:%M}, {len(f.p_mw)} steps")


def _touching(t: Trace) -> set[str]:
    assert t.mol is not None  # the session sent one
    return {
        e.bid_id for e in t.mol.bids if any(a.connection == Connection.DN and a.dso_id == t.device.id for a in e.assets)
    }


@check("DSO-MV-010")
def mol_answered(t: Trace) -> Outcome:
    out, a = _answered(t, "mol")
    if out:
        return out
    assert a is not None  # answered
    took = (a.t_us - _probe_sent(t, "mol").sent_us) / 1000
    return ok(f"mol_validation in {took:.1f} ms", f"{took:.1f} ms", "<= 2 s")


@check("DSO-MV-020")
def mol_covers(t: Trace) -> Outcome:
    p = _probe(t, "mol")
    a = t.answer(p) if p else None
    if a is None:
        return skip("no mol_validation to judge (see DSO-MV-010)")
    assert t.mol is not None  # answered, so sent
    named = {r.bid_id for r in a.body.results}
    listed = {e.bid_id for e in t.mol.bids}
    if missing := _touching(t) - named:
        return fail(f"no verdict for {sorted(missing)}", f"{len(named)} verdicts", f"{sorted(_touching(t))}")
    if extra := named - listed:
        return fail(f"verdicts for bids not in the list: {sorted(extra)}")
    return ok(f"verdicts for all {len(_touching(t))} bids in the grid")


@check("DSO-MV-030")
def mol_bounds(t: Trace) -> Outcome:
    p = _probe(t, "mol")
    a = t.answer(p) if p else None
    if a is None:
        return skip("no mol_validation to judge (see DSO-MV-010)")
    assert t.mol is not None  # answered, so sent
    quantity = {e.bid_id: e.quantity_mw for e in t.mol.bids}
    for r in a.body.results:
        q = quantity.get(r.bid_id)
        if q is None:
            continue
        if not 0 <= r.lower_bound_mw <= r.upper_bound_mw + 1e-9 or r.upper_bound_mw > q + 1e-6:
            return fail(
                f"{r.bid_id}: bounds [{r.lower_bound_mw}, {r.upper_bound_mw}] MW for {q} MW offered",
                f"[{r.lower_bound_mw}, {r.upper_bound_mw}] MW",
                f"0 <= lower <= upper <= {q} MW",
            )
        if r.status == BidStatus.REJECTED and r.upper_bound_mw > 1e-9:
            return fail(f"{r.bid_id}: rejected with upper bound {r.upper_bound_mw} MW", f"{r.upper_bound_mw}", "0")
        if r.status == BidStatus.LIMITED and not r.limiting_element:
            return fail(f"{r.bid_id}: limited without a limiting element")
    return ok(f"{len(a.body.results)} verdicts consistent")


@check("DSO-EM-010")
def curtailment(t: Trace) -> Outcome:
    out, a = _answered(t, "curtailment")
    if out:
        return out
    assert a is not None  # answered
    asked = _probe_sent(t, "curtailment").body.amount_mw
    b = a.body
    want = "accepted" if b.accepted_mw >= asked - 1e-6 else ("partial" if b.accepted_mw > 1e-9 else "refused")
    if b.status != want:
        return fail(f"status {b.status!r} with accepted_mw {b.accepted_mw} of {asked} MW", b.status, want)
    if b.status != "accepted" and not b.reason:
        return fail(f"{b.status} without a reason")
    return ok(f"{b.status}: {b.accepted_mw} of {asked} MW")


# --- TSO ---------------------------------------------------------------------------------------


def _tso_setpoints(t: Trace) -> list[Captured]:
    """The setpoints to the suite's BSP, by cycle."""
    bsp = Party(role="bsp", id=t.scenario.bsps[0].id)
    return sorted((m for m in t.of_type("delta_setpoint") if bsp in m.envelope.recipients), key=lambda m: m.body.cycle)


def _dn_bids(t: Trace) -> dict[str, str]:
    """Bid -> DSO, for the suite BSP's bids with an asset in a DSO's grid."""
    bsp = t.scenario.bsps[0]
    by_asset = {a.asset_id: a for a in bsp.assets}
    return {
        b.bid_id: str(by_asset[a].dso_id)
        for b in bsp.bids
        for a in b.assets
        if by_asset[a].connection == Connection.DN and by_asset[a].dso_id
    }


def _started(t: Trace) -> Outcome | None:
    """Why a TSO session's run cannot be judged (it never started, or stopped early), or None."""
    return skip(t.aborted or "the session did not start") if t.run_start is None or t.aborted else None


@check("TSO-PQ-010")
def tso_prequalification(t: Trace) -> Outcome:
    out, a, asked, verdicts = _prequalification_verdicts(t, "asked")
    if out:
        return out
    forwarded = {x.asset_id: f for f in t.forwards for x in f.body.assets}
    for asset in asked.values():
        if asset.connection != Connection.DN:
            continue
        f = forwarded.get(asset.asset_id)
        if f is None:
            return fail(f"DN asset {asset.asset_id} was never forwarded to {asset.dso_id}")
        if f.body.dso_id != asset.dso_id or f.received_us > a.t_us:
            return fail(f"DN asset {asset.asset_id}: forwarded to {f.body.dso_id}, or after the answer")
        mine, theirs = verdicts[asset.asset_id], t.dso_verdicts[asset.asset_id]
        if mine.qualified and (
            mine.validated_capacity_up_mw > theirs.validated_capacity_up_mw + 1e-6
            or mine.validated_capacity_down_mw > theirs.validated_capacity_down_mw + 1e-6
        ):
            return fail(
                f"{asset.asset_id}: the TSO qualified +{mine.validated_capacity_up_mw} MW, its DSO "
                f"+{theirs.validated_capacity_up_mw} MW",
                f"{mine.validated_capacity_up_mw} MW",
                f"<= {theirs.validated_capacity_up_mw} MW",
            )
    took = (a.t_us - _probe_sent(t, "prequalification").sent_us) / 1000
    return ok(f"{len(verdicts)} verdicts in {took:.1f} ms, DN assets via their DSO", f"{took:.1f} ms", "<= 10 s")


@check("TSO-SC-010")
def tso_final_schedules(t: Trace) -> Outcome:
    if why := _started(t):
        return why
    dn = {a.asset_id: a.dso_id for a in t.scenario.bsps[0].assets if a.connection == Connection.DN and a.dso_id}
    if not dn:
        return skip("the suite's BSP has no DN asset")
    finals = [m for m in t.of_type("schedule", "dso") if m.body.kind == "final"]
    for asset, dso_id in dn.items():
        if not any(
            Party(role="dso", id=dso_id) in m.envelope.recipients and asset in {x.asset_id for x in m.body.series}
            for m in finals
        ):
            return fail(f"no final schedule with {asset} to dso/{dso_id}")
    return ok(f"final schedules of {len(dn)} DN assets passed to their DSO")


def _accepted(t: Trace) -> dict[str, Captured]:
    """Bid -> the first offer_acceptance naming it."""
    out: dict[str, Captured] = {}
    for m in t.of_type("offer_acceptance", "bsp"):
        for offer in m.body.accepted:
            out.setdefault(offer.bid_id, m)
    return out


@check("TSO-MV-010")
def tso_mol_before_acceptance(t: Trace) -> Outcome:
    if why := _started(t):
        return why
    dn = _dn_bids(t)
    accepted = {b: m for b, m in _accepted(t).items() if b in dn}
    if not accepted:
        return skip("no bid with a DN asset was accepted")
    mols = t.of_type("merit_order_list", "dso")
    for bid, acc in accepted.items():
        sent = [
            m
            for m in mols
            if Party(role="dso", id=dn[bid]) in m.envelope.recipients
            and any(e.bid_id == bid for e in m.body.bids)
            and m.t_us <= acc.t_us
        ]
        if not sent:
            return fail(
                f"{bid} accepted at {acc.envelope.created_at:%H:%M:%S} without a merit order list to "
                f"dso/{dn[bid]} before"
            )
        if not sent[0].envelope.reply_to:
            return fail(f"the merit order list to dso/{dn[bid]} has no reply_to: {show(sent[0], 160)}")
    return ok(f"{len(accepted)} DN bids validated before acceptance")


@check("TSO-MV-020")
def tso_within_validation(t: Trace) -> Outcome:
    if why := _started(t):
        return why
    dn = _dn_bids(t)
    worst = 0.0
    for m in _tso_setpoints(t):
        for bid, delta in m.body.bid_deltas_mw.items():
            if bid not in dn:
                continue
            bound = t.validated.get(bid, 0.0)
            worst = max(worst, abs(delta))
            if abs(delta) > bound + 1e-6:
                what = "validated" if bid in t.validated else "never validated (bound 0)"
                return fail(
                    f"cycle {m.body.cycle}: {bid} at {abs(delta):.3f} MW, {what} to {bound:.3f} MW",
                    f"{abs(delta):.3f} MW",
                    f"<= {bound:.3f} MW",
                )
    return ok(f"DN bids at most {worst:.3f} MW, within their validation", f"{worst:.3f} MW")


@check("TSO-OA-010")
def tso_acceptance_first(t: Trace) -> Outcome:
    if why := _started(t):
        return why
    accepted = _accepted(t)
    n = 0
    for m in _tso_setpoints(t):
        for bid, delta in m.body.bid_deltas_mw.items():
            if abs(delta) > 1e-9:
                n += 1
                acc = accepted.get(bid)
                if acc is None or acc.t_us > m.t_us:
                    return fail(f"cycle {m.body.cycle}: {bid} activated before an offer_acceptance named it")
    return ok(f"{n} activations of accepted bids") if n else skip("nothing was activated")


@check("TSO-SP-010")
def tso_setpoint_cadence(t: Trace) -> Outcome:
    if why := _started(t):
        return why
    sps = _tso_setpoints(t)
    if len(sps) < 2:
        return fail(f"{len(sps)} setpoints in the session") if t.run_start else skip("no setpoints")
    for a, b in zip(sps, sps[1:]):
        gap = (b.body.instant - a.body.instant).total_seconds()
        if b.body.cycle != a.body.cycle + 1 or abs(gap - t.period_s) > 1e-6:
            return fail(
                f"cycle {a.body.cycle} at {a.body.instant:%H:%M:%S} followed by cycle {b.body.cycle} at "
                f"{b.body.instant:%H:%M:%S}",
                f"{gap:g} s",
                f"{t.period_s:g} s",
            )
    for m in sps:
        if abs(m.body.delta_mw - sum(m.body.bid_deltas_mw.values())) > 1e-4:
            return fail(f"cycle {m.body.cycle}: delta_mw {m.body.delta_mw} is not the sum of bid_deltas_mw")
    return ok(f"{len(sps)} setpoints, cycles {sps[0].body.cycle}..{sps[-1].body.cycle} every {t.period_s:g} s")


@check("TSO-SP-020")
def tso_setpoint_expiry(t: Trace) -> Outcome:
    if why := _started(t):
        return why
    bound = t.period_s / t.speed + 1e-3
    longest = 0.0
    for m in _tso_setpoints(t):
        env = m.envelope
        life = (env.valid_until - env.created_at).total_seconds() if env.valid_until else float("inf")
        longest = max(longest, life)
        if life > bound:
            return fail(f"cycle {m.body.cycle} valid for {life:.3f} s", f"{life:.3f} s", f"<= {bound:.3f} s")
    return ok("every setpoint expires within its cycle", f"{longest:.3f} s", f"<= {bound:.3f} s")


@check("TSO-SP-030")
def tso_ramp(t: Trace) -> Outcome:
    if why := _started(t):
        return why
    ramps = {b.bid_id: b.ramp_rate_mw_per_min for b in t.scenario.bsps[0].bids}
    step_s = t.scenario.tso.setpoint_step_s  # the configured stepping (actors.rules.RAMP_STEP_S by default)
    series: dict[str, list[tuple[float, float]]] = {}
    for m in _tso_setpoints(t):
        for bid, delta in m.body.bid_deltas_mw.items():
            series.setdefault(bid, []).append((m.body.instant.timestamp(), abs(delta)))
    for bid, points in series.items():
        ramp = ramps.get(bid)
        if ramp is None:
            continue
        low_t, low = points[0]
        for ts, v in points[1:]:  # the largest rise from any earlier point (the running minimum) to this one
            allowed = ramp * (ts - low_t + step_s) / 60
            if v - low > allowed + 1e-6:
                return fail(
                    f"{bid} rose {v - low:.3f} MW in {ts - low_t:.0f} s",
                    f"{v - low:.3f} MW",
                    f"<= {allowed:.3f} MW ({ramp:g} MW/min)",
                )
            if v < low:
                low_t, low = ts, v
    return ok(f"{len(series)} bids within their ramp rates (+ one {step_s:g}-s step)")


@check("TSO-SP-040")
def tso_limit(t: Trace) -> Outcome:
    if why := _started(t):
        return why
    if t.termination is None:
        return skip("the session ended before the termination signal")
    bid, max_mw, sent_us = t.termination
    limits = [m for m in t.of_type("activation_limit", "bsp") if m.body.bid_id == bid and m.t_us >= sent_us]
    if not limits:
        return fail(f"no activation_limit for {bid} after the termination signal")
    lim = limits[0]
    took = (lim.t_us - sent_us) / 1e6
    if took > t.period_s / t.speed:
        return fail(f"activation_limit after {took:.3f} s", f"{took:.3f} s", f"<= {t.period_s / t.speed:.3f} s")
    if lim.body.max_mw > max_mw + 1e-6:
        return fail(f"activation_limit of {lim.body.max_mw} MW for a {max_mw} MW termination")
    after = [m for m in _tso_setpoints(t) if m.t_us > lim.t_us and bid in m.body.bid_deltas_mw]
    for m in after:
        if abs(m.body.bid_deltas_mw[bid]) > max_mw + 1e-6:
            return fail(
                f"cycle {m.body.cycle}: {bid} at {abs(m.body.bid_deltas_mw[bid]):.3f} MW after the limit",
                f"{abs(m.body.bid_deltas_mw[bid]):.3f} MW",
                f"<= {max_mw:.3f} MW",
            )
    return ok(
        f"limit {lim.body.max_mw} MW sent {took * 1000:.1f} ms after the signal; {len(after)} setpoints within",
        f"{took * 1000:.1f} ms",
        f"<= {t.period_s / t.speed * 1000:.0f} ms",
    )


@check("TSO-ST-010")
def tso_settlement(t: Trace) -> Outcome:
    if why := _started(t):
        return why
    energy: dict[tuple[datetime, str], float] = {}
    for m in _tso_setpoints(t):
        isp = isp_of(m.body.instant)
        for bid, delta in m.body.bid_deltas_mw.items():
            energy[(isp, bid)] = energy.get((isp, bid), 0.0) + abs(delta) * t.period_s / 3600
    active = {k: v for k, v in energy.items() if v > 1e-6}
    if not active:
        return skip("nothing was activated")
    reports = {m.body.isp_start: m.body for m in t.of_type("settlement_report", "bsp")}
    for (isp, bid), mwh in sorted(active.items()):
        report = reports.get(isp)
        if report is None:
            return fail(f"no settlement_report for ISP {isp:%H:%M}")
        line = next((x for x in report.lines if x.bid_id == bid), None)
        if line is None:
            return fail(f"settlement of ISP {isp:%H:%M} has no line for {bid}")
        if abs(line.activated_energy_mwh - mwh) > max(0.02 * mwh, 1e-4):
            return fail(
                f"{bid} in ISP {isp:%H:%M}: settled {line.activated_energy_mwh:.4f} MWh, setpoints make {mwh:.4f} MWh",
                f"{line.activated_energy_mwh:.4f} MWh",
                f"{mwh:.4f} MWh ± 2 %",
            )
    return ok(f"{len(active)} bid-ISPs settled as activated")


# --- market operator -----------------------------------------------------------------------------


def _sent(t: Trace, type_name: str) -> list[Captured]:
    """The device's messages of ``type_name`` for the session's ISP, in order."""
    return [
        m
        for m in _mine(t)
        if m.envelope.type == type_name and not _stored(t, m) and getattr(m.body, "isp_start", None) == t.isp0
    ]


def _awards(t: Trace) -> list:  # list[schemas.messages.Award]
    """Every award of the ISP's market results, once (a result may reach several parties)."""
    seen: dict[tuple, object] = {}
    for m in _sent(t, "market_result"):
        for a in m.body.awards:
            seen.setdefault((a.buyer_role, a.buyer_id, a.need_id, a.bid_id), a)
    return list(seen.values())


def _per(awards: list, key: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for a in awards:
        out[getattr(a, key)] = out.get(getattr(a, key), 0.0) + a.awarded_mw
    return out


def _bound(t: Trace, bid_id: str) -> float:
    return t.validated.get(bid_id, t.market_bids[bid_id].quantity_mw)


def _late(t: Trace, m: Captured) -> float:
    """Seconds after the ISP started that ``m`` arrived (<= 0: in time)."""
    return m.t_us / 1e6 - _isp_wall(t, t.isp0)


def _market_session(t: Trace) -> Outcome | None:
    if not t.market_bids:
        return skip("the session ended before the suite sent its bids")
    if not _sent(t, "market_result"):
        return fail(f"no market_result for ISP {t.isp0:%H:%M} from {t.device}")
    return None


@check("MO-MV-010")
def mo_mol(t: Trace) -> Outcome:
    if not t.market_bids:
        return skip("the session ended before the suite sent its bids")
    grids: dict[str, set[str]] = {}
    for b in t.market_bids.values():
        for a in b.assets:
            if a.connection == Connection.DN and a.dso_id:
                grids.setdefault(a.dso_id, set()).add(b.bid_id)
    for dso, want in sorted(grids.items()):
        mols = [m for m in _sent(t, "merit_order_list") if Party(role="dso", id=dso) in m.envelope.recipients]
        if not mols:
            return fail(f"no merit_order_list for ISP {t.isp0:%H:%M} to dso/{dso}")
        m = mols[0]
        if _late(t, m) > 0:
            return fail(
                f"the list reached dso/{dso} {_late(t, m):.2f} s after the ISP started: {show(m, 160)}",
                f"+{_late(t, m):.2f} s",
                "before the ISP",
            )
        if m.envelope.reply_to is None:
            return fail(f"the list to dso/{dso} has no reply_to: {show(m, 160)}")
        got = {e.bid_id for e in m.body.bids}
        if got != want:
            return fail(
                f"the list to dso/{dso} holds {sorted(got)}, the bids in its grid are {sorted(want)}",
                str(sorted(got)),
                str(sorted(want)),
            )
    return ok(f"{len(grids)} DSO(s) got their bids to validate before the ISP")


@check("MO-MK-010")
def mo_bounds(t: Trace) -> Outcome:
    if (early := _market_session(t)) is not None:
        return early
    per_bid = _per(_awards(t), "bid_id")
    for bid, mw in sorted(per_bid.items()):
        if bid not in t.market_bids:
            return fail(f"an award of bid {bid}, which nobody offered")
        bound = _bound(t, bid)
        if mw > bound + 1e-3:
            how = "validated by its DSO" if bid in t.validated else "offered"
            return fail(
                f"{bid} awarded {mw:.3f} MW over all buyers, {bound:g} MW {how}", f"{mw:.3f} MW", f"<= {bound:g} MW"
            )
    return ok(f"{len(per_bid)} bids awarded within their bounds", str(len(per_bid)))


@check("MO-MK-020")
def mo_needs(t: Trace) -> Outcome:
    if (early := _market_session(t)) is not None:
        return early
    awards = _awards(t)
    for a in awards:
        if a.need_id not in t.market_needs:
            return fail(f"an award for need {a.need_id}, which nobody stated")
        party, need = t.market_needs[a.need_id]
        bid = t.market_bids.get(a.bid_id)
        if (a.buyer_role, a.buyer_id) != (party.role, party.id):
            return fail(f"need {a.need_id} is {party}'s, awarded to {a.buyer_role}/{a.buyer_id}")
        if bid is None:
            return fail(f"an award of bid {a.bid_id}, which nobody offered")
        if need.direction is not None and bid.direction != need.direction:
            return fail(f"need {a.need_id} ({need.direction.name}) served by {a.bid_id} ({bid.direction.name})")
        if bid.price_eur_per_mwh > need.max_price_eur_per_mwh + 1e-9:
            return fail(
                f"need {a.need_id} served by {a.bid_id} at {bid.price_eur_per_mwh:g} EUR/MWh",
                f"{bid.price_eur_per_mwh:g} EUR/MWh",
                f"<= {need.max_price_eur_per_mwh:g} EUR/MWh",
            )
    for need_id, mw in _per(awards, "need_id").items():
        quantity = t.market_needs[need_id][1].quantity
        if mw > quantity + 1e-3:
            return fail(f"need {need_id} got {mw:.3f} MW", f"{mw:.3f} MW", f"<= {quantity:g} MW")
    return ok(f"{len(awards)} awards serve stated needs within quantity, direction and price", str(len(awards)))


@check("MO-MK-030")
def mo_willingness(t: Trace) -> Outcome:
    if (early := _market_session(t)) is not None:
        return early
    awards = _awards(t)
    used, served = _per(awards, "bid_id"), _per(awards, "need_id")
    price = {b: x.price_eur_per_mwh for b, x in t.market_bids.items()}
    for need_id, (_, need) in sorted(t.market_needs.items()):
        pays = need.max_price_eur_per_mwh
        same = [a for a in awards if a.bid_id in price and t.market_bids[a.bid_id].direction == need.direction]
        less_willing = [
            a for a in same if a.need_id in t.market_needs and t.market_needs[a.need_id][1].max_price_eur_per_mwh < pays
        ]
        short = need.quantity - served.get(need_id, 0.0)
        if short > 1e-3:
            for bid_id, bid in sorted(t.market_bids.items()):
                left = _bound(t, bid_id) - used.get(bid_id, 0.0)
                if bid.direction == need.direction and price[bid_id] <= pays and left > 1e-3:
                    return fail(
                        f"need {need_id} is {short:.3f} MW short while {bid_id} at {price[bid_id]:g} EUR/MWh "
                        f"has {left:.3f} MW unused",
                        f"{short:.3f} MW short",
                        "0 MW",
                    )
            for a in less_willing:
                if price[a.bid_id] <= pays:
                    return fail(
                        f"need {need_id} (pays up to {pays:g}) is {short:.3f} MW short while {a.bid_id} "
                        f"went to {a.need_id}, which pays less"
                    )
        paid = max((price[a.bid_id] for a in same if a.need_id == need_id), default=None)
        for a in less_willing:
            if paid is not None and price[a.bid_id] < paid - 1e-9:
                return fail(
                    f"need {need_id} (pays up to {pays:g}) paid {paid:g} EUR/MWh while the less willing "
                    f"{a.need_id} got {a.bid_id} at {price[a.bid_id]:g}",
                    f"{paid:g} EUR/MWh",
                    f"<= {price[a.bid_id]:g} EUR/MWh",
                )
    return ok(f"{len(t.market_needs)} needs served in order of willingness to pay")


@check("MO-MK-040")
def mo_results(t: Trace) -> Outcome:
    if (early := _market_session(t)) is not None:
        return early
    awards = _awards(t)
    buyers = {t.tso} | {party for party, _ in t.market_needs.values()}
    for party in sorted(buyers, key=str):
        results = [m for m in _sent(t, "market_result") if party in m.envelope.recipients]
        if not results:
            return fail(f"no market_result for ISP {t.isp0:%H:%M} to {party}")
        m = results[0]
        if _late(t, m) > 0:
            return fail(
                f"the market_result reached {party} {_late(t, m):.2f} s after the ISP started",
                f"+{_late(t, m):.2f} s",
                "before the ISP",
            )
        foreign = [a for a in m.body.awards if (a.buyer_role, a.buyer_id) != (party.role, party.id)]
        if foreign:
            return fail(f"the market_result to {party} carries {foreign[0].buyer_role}/{foreign[0].buyer_id}'s award")
        own = {(a.need_id, a.bid_id) for a in awards if (a.buyer_role, a.buyer_id) == (party.role, party.id)}
        if {(a.need_id, a.bid_id) for a in m.body.awards} != own:
            return fail(f"the first market_result to {party} lacks some of its awards: {show(m, 200)}")
    return ok(f"{len(buyers)} buyers got their results before the ISP", str(len(buyers)))


@check("MO-MK-050")
def mo_acceptances(t: Trace) -> Outcome:
    if (early := _market_session(t)) is not None:
        return early
    per_bid = _per(_awards(t), "bid_id")
    bsps = sorted({b.bsp_id for b in t.market_bids.values()})
    for bsp in bsps:
        got = [m for m in _sent(t, "offer_acceptance") if Party(role="bsp", id=bsp) in m.envelope.recipients]
        if not got:
            return fail(f"no offer_acceptance for ISP {t.isp0:%H:%M} to bsp/{bsp}")
        m = got[0]
        if _late(t, m) > 0:
            return fail(
                f"the offer_acceptance reached bsp/{bsp} {_late(t, m):.2f} s after the ISP started",
                f"+{_late(t, m):.2f} s",
                "before the ISP",
            )
        accepted = {a.bid_id: a.upper_bound_mw for a in m.body.accepted}
        for bid_id, bid in sorted(t.market_bids.items()):
            if bid.bsp_id != bsp:
                continue
            mw = per_bid.get(bid_id, 0.0)
            if mw > 1e-3 and abs(accepted.get(bid_id, -1.0) - mw) > 1e-3:
                return fail(
                    f"{bid_id} awarded {mw:.3f} MW, accepted with {accepted.get(bid_id)}: {show(m, 200)}",
                    str(accepted.get(bid_id)),
                    f"{mw:.3f} MW",
                )
            if mw <= 1e-3 and (bid_id in accepted or bid_id not in m.body.rejected_bid_ids):
                return fail(f"{bid_id} got no award but is not rejected: {show(m, 200)}")
    return ok(f"{len(bsps)} BSPs got acceptances matching the awards", str(len(bsps)))


@check("MO-MK-060")
def mo_commercial(t: Trace) -> Outcome:
    if (early := _market_session(t)) is not None:
        return early
    commercial = [a for a in _awards(t) if a.buyer_role == "bsp"]
    if not commercial:
        return skip("no commercial party got an award")
    flex = _sent(t, "flex_activation")
    for a in commercial:
        bid = t.market_bids[a.bid_id]
        to = [Party(role="bsp", id=bid.bsp_id), t.tso] + sorted(
            {Party(role="dso", id=x.dso_id) for x in bid.assets if x.connection == Connection.DN and x.dso_id}, key=str
        )
        for party in to:
            if not any(
                party in m.envelope.recipients
                and m.body.bid_id == a.bid_id
                and m.body.buyer_id == a.buyer_id
                and abs(m.body.activated_mw - a.awarded_mw) <= 1e-3
                and abs(m.body.price_eur_per_mwh - a.price_eur_per_mwh) <= 1e-9
                for m in flex
            ):
                return fail(f"no flex_activation of {a.bid_id} for {a.buyer_id} ({a.awarded_mw:g} MW) to {party}")
    return ok(f"{len(commercial)} commercial award(s) activated to BSP, TSO and DSO", str(len(commercial)))
