"""Conformance checks judged on a synthetic session (no broker): a device is not failed for what a
busy host or a slow network did to the suite's own messages."""

import uuid
from datetime import UTC, datetime, timedelta

from tsodso.gateway import BrokerSpec, Received
from tsodso.schemas import Envelope, Party
from tsodso.schemas.codes import RejectReason
from tsodso.schemas.messages import Rejection, Telemetry
from tsodso.testbed.capture import Captured
from tsodso.testbed.conformance.checks import CHECKS
from tsodso.testbed.conformance.session import SetpointSent, Trace
from tsodso.testbed.scenario import load_scenario

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
TSO, DEVICE = Party(role="tso", id="tso"), Party(role="bsp", id="dev")


def _env(sender: Party, to: Party, type_name: str, at: datetime, valid_s: float = 4.0) -> Envelope:
    return Envelope(
        message_id=uuid.uuid4(),
        type=type_name,
        schema_version="1.0",
        sender=sender,
        recipients=[to],
        sequence=1,
        created_at=at,
        valid_until=at + timedelta(seconds=valid_s),
    )


def _session(rejection_after_s: float | None) -> Trace:
    """Three setpoints; the device answers cycles 0 and 2 and refuses cycle 1 as expired, its notice
    written ``rejection_after_s`` after the setpoint was created (None: no notice at all)."""
    t = Trace(
        "bsp",
        DEVICE,
        TSO,
        BrokerSpec.parse("mqtt://127.0.0.1"),
        1.0,
        4.0,
        load_scenario("scenarios/nl-afrr-congestion.yaml"),
    )
    t.isp0 = T0
    for k in range(3):
        at = T0 + timedelta(seconds=4 * k)
        env = _env(TSO, DEVICE, "delta_setpoint", at)
        t.setpoints[k] = SetpointSent(k, at, 1.0, False, env, int(at.timestamp() * 1e6))
        if k == 1:
            if rejection_after_s is not None:
                notice = Rejection(
                    rejected_message_id=str(env.message_id),
                    rejected_topic="t",
                    code=RejectReason.EXPIRED,
                    reason="expired",
                )
                t.rejections.append(
                    Received(
                        _env(DEVICE, TSO, "rejection", at + timedelta(seconds=rejection_after_s)), notice, "t", 0, 0
                    )
                )
            continue
        body = Telemetry(source_id="dev", instant=at, cycle=k, delivered_delta_mw=1.0, measurements=[])
        sent_us = int((at + timedelta(seconds=1)).timestamp() * 1e6)
        t.messages.append(Captured(sent_us, "t", 1, False, b"", envelope=_env(DEVICE, TSO, "telemetry", at), body=body))
    return t


def test_a_setpoint_the_device_refused_because_it_arrived_expired_owes_no_telemetry():
    outcome = CHECKS["BSP-TM-010"](_session(rejection_after_s=5.0))
    assert outcome.status == "pass" and "1 setpoints arrived expired" in outcome.evidence


def test_a_device_that_claims_expiry_before_the_setpoint_expired_still_owes_its_telemetry():
    assert CHECKS["BSP-TM-010"](_session(rejection_after_s=1.0)).status == "fail"
    assert CHECKS["BSP-TM-010"](_session(rejection_after_s=None)).status == "fail"
