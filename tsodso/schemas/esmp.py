"""The contract's market messages as ENTSO-E documents (IEC 62325-451 / ESMP), and back.

One function writes each document from contract bodies; :func:`read_document` turns any of them
back into contract bodies, validated. docs/esmp.md has the mapping field by field.

=====================================  ==========================================================
contract                               document (namespace version)
=====================================  ==========================================================
``energy_bid`` (one BSP, one ISP)      ReserveBid_MarketDocument A37 (451-7 reservebiddocument 7:4)
``merit_order_list``                   MeritOrderList_MarketDocument A43 (451-7 moldocument 7:3)
``mol_validation``                     BidAvailability_MarketDocument B45 (451-n 1:1)
``offer_acceptance``                   ReserveAllocationResult_MarketDocument A38 (451-7 6:5)
``delta_setpoint`` (one BSP, one ISP)  Activation_MarketDocument A83 (451-7 activationdocument 6:4)
=====================================  ==========================================================

A bid delivered by several assets is one time series per asset, grouped by
``multipartBidIdentification`` = the bid id; each says where its asset connects
(``connecting_Domain``: the DSO's domain behind a DSO, the TSO's area otherwise). A contract value
with no element of its own travels as a reason of code A95 ("complementary information") whose text
is ``key=value`` pairs separated by ``;`` (e.g. ``reference_mw=200;connection_bus=der-park``).

The input of :func:`read_document` is hostile until checked: its size is bounded, XML entities and
DTDs are refused (defusedxml), and every value ends in a contract model that validates it; a
problem is a :class:`DocumentError` naming the element.
"""

import math
import re
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from xml.etree import ElementTree as ET

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from pydantic import ValidationError

from tsodso.schemas.codes import MEASUREMENT_UNIT_MW, Direction, ProcessType, Resolution
from tsodso.schemas.envelope import Party
from tsodso.schemas.messages import (
    AcceptedOffer,
    BidAsset,
    BidValidation,
    Body,
    DeltaSetpoint,
    EnergyBid,
    MeritOrderList,
    MolEntry,
    MolValidation,
    OfferAcceptance,
)

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
"""Largest document :func:`read_document` reads; a larger one is refused with its size (an ISP's
PT4S activations of 100 bids are ~2 MB)."""

NAMESPACES = {
    "ReserveBid_MarketDocument": "urn:iec62325.351:tc57wg16:451-7:reservebiddocument:7:4",
    "MeritOrderList_MarketDocument": "urn:iec62325.351:tc57wg16:451-7:moldocument:7:3",
    "BidAvailability_MarketDocument": "urn:iec62325.351:tc57wg16:451-n:bidavailabilitydocument:1:1",
    "ReserveAllocationResult_MarketDocument": "urn:iec62325.351:tc57wg16:451-7:reserveallocationresultdocument:6:5",
    "Activation_MarketDocument": "urn:iec62325.351:tc57wg16:451-7:activationdocument:6:4",
}
"""Root element → the namespace (schema version) written. Reading accepts any version of the same
document (the elements used here are the same in each)."""

DOCUMENT_TYPE = {
    "ReserveBid_MarketDocument": "A37",  # Reserve tender document
    "MeritOrderList_MarketDocument": "A43",  # MOL document
    "BidAvailability_MarketDocument": "B45",  # Bid availability document
    "ReserveAllocationResult_MarketDocument": "A38",  # Reserve allocation result document
    "Activation_MarketDocument": "A83",  # Activated balancing quantities
}

ROLE_CODES = {"tso": "A49", "dso": "A50", "bsp": "A46", "mo": "A11"}
"""Contract role → ENTSO-E market role (A49 TSO, A50 DSO, A46 BSP, A11 market operator)."""
ROLES = {code: role for role, code in ROLE_CODES.items()}

BUSINESS_OFFER = "B74"  # Offer
BUSINESS_ACTIVATED = {ProcessType.AFRR: "A96", ProcessType.MFRR: "A97"}  # aFRR / mFRR
STATUS_AVAILABLE = "A06"
STATUS_ACTIVATED = "A07"
YES, NO = "A01", "A02"
COMPLEMENTARY = "A95"  # Complementary information: a contract value without an element of its own
VALIDATION_REASON = {"accepted": "A73", "limited": "A44", "rejected": "B09"}
"""MOL validation status → reason code: A73 bid accepted, A44 quantity decreased, B09 bid not accepted."""
VALIDATION_STATUS = {code: status for status, code in VALIDATION_REASON.items()}
ACCEPTED, NOT_ACCEPTED = "A73", "B09"
EIC = "A01"
MAX_MRID = 60
MAX_PARTY = 16
MAX_AREA = 18


class DocumentError(ValueError):
    """A document that cannot be written or read; the message names the element and what is wrong."""


@dataclass(frozen=True)
class Coding:
    """How the contract's ids become mRIDs: ``codes`` maps an id (party, area or asset) to its code
    (an EIC code: coding scheme A01); an id without a code is written as it is with the national
    ``scheme`` (e.g. NNL). Reading maps codes back; an unknown code becomes the id it spells in
    lower case."""

    codes: Mapping[str, str] = field(default_factory=dict)
    scheme: str = "NNL"

    def code(self, contract_id: str, limit: int, what: str) -> tuple[str, str]:
        if contract_id in self.codes:
            value, scheme = self.codes[contract_id], EIC
        else:
            value, scheme = contract_id, self.scheme
        if len(value) > limit:
            fix = (
                f"the codes file's code for {contract_id} is too long"
                if contract_id in self.codes
                else f"give it a code (--codes FILE with '{contract_id}: <EIC code>')"
            )
            raise DocumentError(
                f"{what} {value!r} is {len(value)} characters; an ENTSO-E document allows {limit}: {fix}"
            )
        return value, scheme

    def contract_id(self, value: str, what: str) -> str:
        for contract_id, code in self.codes.items():
            if code == value:
                return contract_id
        candidate = value.strip().lower()
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", candidate):
            raise DocumentError(
                f"{what} {value!r} is no contract id (lower-case letters, digits, '-', '_'): map it with "
                f"--codes FILE ('<id>: {value}')"
            )
        return candidate


# --- writing -------------------------------------------------------------------------------------


def _decimal(value: float) -> str:
    """A float as an XSD decimal (no exponent), exactly: the shortest text that reads back as it."""
    if not math.isfinite(value):
        raise DocumentError(f"{value} is not a quantity a document can carry")
    text = format(Decimal(repr(value)), "f")
    return "0" if text in ("-0", "-0.0") else text


def _minute(t: datetime) -> str:
    if t.second or t.microsecond:
        raise DocumentError(f"{t.isoformat()} is not on a whole minute: a document's time interval is in minutes")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def _second(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration_s(seconds: float) -> str:
    return f"PT{_decimal(seconds)}S"


def _complementary(values: Mapping[str, Any]) -> str | None:
    pairs = [f"{k}={_decimal(v) if isinstance(v, float) else v}" for k, v in values.items() if v is not None]
    text = ";".join(pairs)
    if len(text) > 512:
        raise DocumentError(f"complementary information longer than a reason's 512 characters: {text[:80]}...")
    return text or None


class _Writer:
    def __init__(self, root: str, coding: Coding):
        self.ns = NAMESPACES[root]
        self.coding = coding
        self.root = ET.Element(f"{{{self.ns}}}{root}")

    def el(self, parent: ET.Element, name: str, text: str | None = None, **attrs: str) -> ET.Element:
        node = ET.SubElement(parent, f"{{{self.ns}}}{name}", attrs)
        if text is not None:
            node.text = text
        return node

    def mrid(self, parent: ET.Element, name: str, contract_id: str, limit: int, what: str) -> None:
        value, scheme = self.coding.code(contract_id, limit, what)
        self.el(parent, name, value, codingScheme=scheme)

    def header(
        self,
        mrid: str,
        revision: int,
        process: str | None,
        sender: Party,
        receiver: Party,
        created: datetime,
    ) -> None:
        if len(mrid) > MAX_MRID:
            raise DocumentError(f"document mRID {mrid!r} is longer than {MAX_MRID} characters")
        if not 1 <= revision <= 999:
            raise DocumentError(f"revision {revision} is not 1..999 (revisionNumber)")
        self.el(self.root, "mRID", mrid)
        self.el(self.root, "revisionNumber", str(revision))
        self.el(self.root, "type", DOCUMENT_TYPE[self.root.tag.split("}")[1]])
        if process is not None:
            self.el(self.root, "process.processType", process)
        self.mrid(self.root, "sender_MarketParticipant.mRID", sender.id, MAX_PARTY, "sender")
        self.el(self.root, "sender_MarketParticipant.marketRole.type", ROLE_CODES[sender.role])
        self.mrid(self.root, "receiver_MarketParticipant.mRID", receiver.id, MAX_PARTY, "receiver")
        self.el(self.root, "receiver_MarketParticipant.marketRole.type", ROLE_CODES[receiver.role])
        self.el(self.root, "createdDateTime", _second(created))

    def interval(self, parent: ET.Element, name: str, start: datetime, end: datetime) -> None:
        node = self.el(parent, name)
        self.el(node, "start", _minute(start))
        self.el(node, "end", _minute(end))

    def reason(self, parent: ET.Element, code: str, text: str | None = None) -> None:
        node = self.el(parent, "Reason")
        self.el(node, "code", code)
        if text is not None:
            self.el(node, "text", text[:512])

    def isp_point(self, series: ET.Element, isp_start: datetime) -> ET.Element:
        """A series' one Period (the ISP, PT15M) with its one Point, position 1; returns the Point."""
        period = self.el(series, "Period")
        self.interval(period, "timeInterval", isp_start, _isp_end(isp_start))
        self.el(period, "resolution", Resolution.PT15M.value)
        point = self.el(period, "Point")
        self.el(point, "position", "1")
        return point

    def complementary(self, parent: ET.Element, values: Mapping[str, Any]) -> None:
        """The values without an element of their own, as a reason A95 (none when all are None)."""
        text = _complementary(values)
        if text:
            self.reason(parent, COMPLEMENTARY, text)

    def bytes(self) -> bytes:
        ET.register_namespace("", self.ns)
        ET.indent(self.root)
        return ET.tostring(self.root, encoding="UTF-8", xml_declaration=True) + b"\n"


def _isp_end(start: datetime) -> datetime:
    return start + timedelta(minutes=15)


def _component_id(bid_id: str, asset_id: str, n_assets: int) -> str:
    component = bid_id if n_assets == 1 else f"{bid_id}.{asset_id}"
    if len(component) > MAX_MRID:
        raise DocumentError(f"bid {bid_id} asset {asset_id}: time series mRID {component!r} is over {MAX_MRID} chars")
    return component


def _domain(w: _Writer, parent: ET.Element, name: str, asset: BidAsset, area: str) -> None:
    domain = asset.dso_id if asset.connection == "DN" and asset.dso_id else area
    w.mrid(parent, name, domain, MAX_AREA, "domain")


def bid_document(
    bids: list[EnergyBid],
    *,
    mrid: str,
    revision: int,
    tso: Party,
    area: str,
    created: datetime,
    coding: Coding,
) -> bytes:
    """One BSP's bids for one ISP as a ReserveBid_MarketDocument (BSP → TSO)."""
    first = bids[0]
    if any(b.bsp_id != first.bsp_id or b.isp_start != first.isp_start or b.process != first.process for b in bids):
        raise DocumentError("one reserve bid document holds one BSP's bids of one process for one ISP")
    w = _Writer("ReserveBid_MarketDocument", coding)
    w.header(mrid, revision, first.process.value, Party(role="bsp", id=first.bsp_id), tso, created)
    w.interval(w.root, "reserveBid_Period.timeInterval", first.isp_start, _isp_end(first.isp_start))
    w.mrid(w.root, "domain.mRID", area, MAX_AREA, "area")
    for bid in bids:
        total = math.fsum(a.share_mw for a in bid.assets)
        for asset in bid.assets:
            ts = w.el(w.root, "Bid_TimeSeries")
            w.el(ts, "mRID", _component_id(bid.bid_id, asset.asset_id, len(bid.assets)))
            w.el(ts, "businessType", BUSINESS_OFFER)
            w.mrid(ts, "acquiring_Domain.mRID", area, MAX_AREA, "area")
            _domain(w, ts, "connecting_Domain.mRID", asset, area)
            w.mrid(ts, "provider_MarketParticipant.mRID", bid.bsp_id, MAX_PARTY, "BSP")
            w.el(ts, "quantity_Measurement_Unit.name", MEASUREMENT_UNIT_MW)
            w.el(ts, "currency_Unit.name", "EUR")
            w.el(ts, "price_Measurement_Unit.name", "MWH")
            w.el(ts, "divisible", NO if bid.min_quantity_mw >= bid.quantity_mw else YES)
            if len(bid.assets) > 1:
                w.el(ts, "multipartBidIdentification", bid.bid_id)
            w.mrid(ts, "registeredResource.mRID", asset.asset_id, MAX_MRID, "asset")
            w.el(ts, "flowDirection.direction", bid.direction.value)
            w.el(ts, "energyPrice_Measurement_Unit.name", "MWH")
            w.el(
                ts,
                "activation_ConstraintDuration.duration",
                _duration_s(bid.quantity_mw / bid.ramp_rate_mw_per_min * 60),
            )
            point = w.isp_point(ts, bid.isp_start)
            w.el(point, "quantity.quantity", _decimal(asset.share_mw))
            w.el(point, "minimum_Quantity.quantity", _decimal(bid.min_quantity_mw))
            w.el(point, "energy_Price.amount", _decimal(bid.price_eur_per_mwh))
            w.complementary(
                ts,
                {
                    "reference_mw": bid.reference_mw,
                    "connection_bus": asset.connection_bus,
                    "quantity_mw": bid.quantity_mw if total != bid.quantity_mw else None,
                },
            )
    return w.bytes()


def mol_document(mol: MeritOrderList, *, tso: Party, dso: Party, area: str, created: datetime, coding: Coding) -> bytes:
    """A merit order list sent to one DSO for validation as a MeritOrderList_MarketDocument; its
    iteration is the revision number."""
    w = _Writer("MeritOrderList_MarketDocument", coding)
    w.header(mol.mol_id, mol.iteration, mol.process.value, tso, dso, created)
    w.interval(w.root, "period.timeInterval", mol.isp_start, _isp_end(mol.isp_start))
    w.mrid(w.root, "domain.mRID", area, MAX_AREA, "area")
    for entry in mol.bids:
        total = math.fsum(a.share_mw for a in entry.assets)
        for asset in entry.assets:
            ts = w.el(w.root, "TimeSeries")
            w.el(ts, "marketAgreement.mRID", entry.bid_id)
            w.el(ts, "priority", str(entry.rank))
            w.mrid(ts, "resourceProvider_MarketParticipant.mRID", entry.bsp_id, MAX_PARTY, "BSP")
            w.mrid(ts, "registeredResource.mRID", asset.asset_id, MAX_MRID, "asset")
            w.mrid(ts, "acquiring_Domain.mRID", area, MAX_AREA, "area")
            _domain(w, ts, "connecting_Domain.mRID", asset, area)
            w.el(ts, "auction.mRID", _component_id(entry.bid_id, asset.asset_id, len(entry.assets)))
            w.el(ts, "businessType", BUSINESS_OFFER)
            w.interval(ts, "bid_Period.timeInterval", mol.isp_start, _isp_end(mol.isp_start))
            w.el(ts, "quantity_Measurement_Unit.name", MEASUREMENT_UNIT_MW)
            w.el(ts, "currency_Unit.name", "EUR")
            w.el(ts, "energyPrice_Measurement_Unit.name", "MWH")
            w.el(ts, "direction", entry.direction.value)
            w.el(ts, "minimumActivation_Quantity.quantity", _decimal(entry.lower_bound_mw))
            w.el(ts, "marketObjectStatus.status", STATUS_AVAILABLE)
            point = w.isp_point(ts, mol.isp_start)
            w.el(point, "quantity.quantity", _decimal(asset.share_mw))
            w.el(point, "energy_Price.amount", _decimal(entry.price_eur_per_mwh))
            w.complementary(
                ts,
                {
                    "upper_bound_mw": entry.upper_bound_mw,
                    "connection_bus": asset.connection_bus,
                    "quantity_mw": entry.quantity_mw if total != entry.quantity_mw else None,
                },
            )
    return w.bytes()


def availability_document(
    validation: MolValidation,
    *,
    mol: MeritOrderList,
    dso: Party,
    tso: Party,
    created: datetime,
    coding: Coding,
) -> bytes:
    """A DSO's validation of a merit order list as a BidAvailability_MarketDocument (DSO → TSO):
    per bid its status (reason A73 / A44 / B09, with the DSO's explanation as the reason's text)
    and the largest activation the DSO allows (operationalLimit_Quantity)."""
    if validation.needs:
        raise DocumentError(
            f"validation of {validation.mol_id} carries flexibility needs: a bid availability document has no "
            "place for them (docs/esmp.md)"
        )
    w = _Writer("BidAvailability_MarketDocument", coding)
    w.header(f"{validation.mol_id}.{validation.dso_id}", validation.iteration, mol.process.value, dso, tso, created)
    w.interval(w.root, "time_Period.timeInterval", mol.isp_start, _isp_end(mol.isp_start))
    for result in validation.results:
        ts = w.el(w.root, "BidTimeSeries")
        w.el(ts, "mRID", result.bid_id)
        w.el(ts, "bidDocument_MarketDocument.mRID", validation.mol_id)
        w.el(ts, "bidDocument_MarketDocument.revisionNumber", str(validation.iteration))
        w.mrid(ts, "requestingParty_MarketParticipant.mRID", validation.dso_id, MAX_PARTY, "DSO")
        w.el(ts, "requestingParty_MarketParticipant.marketRole.type", ROLE_CODES["dso"])
        w.el(ts, "businessType", BUSINESS_OFFER)
        w.mrid(ts, "domain.mRID", validation.dso_id, MAX_AREA, "DSO domain")
        w.el(ts, "operationalLimit_Quantity.quantity", _decimal(result.upper_bound_mw))
        w.el(ts, "limit_Measurement_Unit.name", MEASUREMENT_UNIT_MW)
        w.reason(ts, VALIDATION_REASON[result.status.value], result.reason)
        w.complementary(
            ts,
            {
                "lower_bound_mw": result.lower_bound_mw,
                "limiting_element": result.limiting_element,
                "loading_percent": result.loading_percent,
                "voltage_pu": result.voltage_pu,
            },
        )
    return w.bytes()


def allocation_document(
    acceptance: OfferAcceptance,
    *,
    mrid: str,
    revision: int,
    process: ProcessType,
    directions: Mapping[str, Direction],
    tso: Party,
    bsp: Party,
    area: str,
    created: datetime,
    coding: Coding,
) -> bytes:
    """The TSO's acceptance of a BSP's offers as a ReserveAllocationResult_MarketDocument: per
    accepted bid the largest activation (the point's quantity) and the smallest; a rejected bid
    with quantity 0 and reason B09. ``directions`` (bid id → direction, from its bid) gives a
    rejected bid's direction (A03 "up and down" when unknown)."""
    w = _Writer("ReserveAllocationResult_MarketDocument", coding)
    w.header(mrid, revision, process.value, tso, bsp, created)
    w.interval(w.root, "reserveBid_Period.timeInterval", acceptance.isp_start, _isp_end(acceptance.isp_start))
    w.mrid(w.root, "domain.mRID", area, MAX_AREA, "area")
    rows: list[tuple[str, str, float, float, str]] = [
        (o.bid_id, o.direction.value, o.lower_bound_mw, o.upper_bound_mw, ACCEPTED) for o in acceptance.accepted
    ]
    rows += [
        (b, directions[b].value if b in directions else "A03", 0.0, 0.0, NOT_ACCEPTED)
        for b in acceptance.rejected_bid_ids
    ]
    for bid_id, direction, lower, upper, code in rows:
        ts = w.el(w.root, "TimeSeries")
        w.el(ts, "mRID", bid_id)
        w.el(ts, "bid_Original_MarketDocument.bid_BidTimeSeries.mRID", bid_id)
        w.el(ts, "businessType", BUSINESS_OFFER)
        w.mrid(ts, "acquiring_Domain.mRID", area, MAX_AREA, "area")
        w.mrid(ts, "connecting_Domain.mRID", area, MAX_AREA, "area")
        w.el(ts, "quantity_Measurement_Unit.name", MEASUREMENT_UNIT_MW)
        w.el(ts, "flowDirection.direction", direction)
        w.el(ts, "minimumActivation_Quantity.quantity", _decimal(lower))
        point = w.isp_point(ts, acceptance.isp_start)
        w.el(point, "quantity", _decimal(upper))
        w.reason(ts, code)
    return w.bytes()


def activation_document(
    setpoints: list[DeltaSetpoint],
    *,
    mrid: str,
    isp_start: datetime,
    directions: Mapping[str, Direction],
    tso: Party,
    area: str,
    created: datetime,
    coding: Coding,
) -> bytes:
    """One BSP's delta setpoints of one ISP as an Activation_MarketDocument (TSO → BSP): per bid a
    time series of the activated quantity at the setpoints' resolution (PT4S), position k = the
    setpoint at ISP start + (k-1) x resolution. The cycle number and the reference output travel
    as complementary information; a setpoint with no bid deltas has no series to travel in."""
    first = setpoints[0]
    step = _resolution_s(first.resolution)
    cycle_offset = None
    positions: list[tuple[int, DeltaSetpoint]] = []
    for sp in setpoints:
        if sp.bsp_id != first.bsp_id or sp.resolution != first.resolution or sp.process != first.process:
            raise DocumentError("one activation document holds one BSP's setpoints of one process and resolution")
        offset_s = (sp.instant - isp_start).total_seconds()
        if not 0 <= offset_s < 900 or offset_s % step:
            raise DocumentError(
                f"setpoint {sp.cycle} at {sp.instant.isoformat()} is not on the ISP's {first.resolution} grid"
            )
        position = int(offset_s // step) + 1
        if cycle_offset is None:
            cycle_offset = sp.cycle - position
        elif sp.cycle - position != cycle_offset:
            raise DocumentError(f"setpoint {sp.cycle}: cycles and instants do not advance together")
        positions.append((position, sp))
    w = _Writer("Activation_MarketDocument", coding)
    w.header(mrid, 1, first.process.value, tso, Party(role="bsp", id=first.bsp_id), created)
    w.interval(w.root, "activation_Time_Period.timeInterval", isp_start, _isp_end(isp_start))
    w.mrid(w.root, "domain.mRID", area, MAX_AREA, "area")
    bid_ids = list(dict.fromkeys(b for _, sp in positions for b in sp.bid_deltas_mw))
    references = [sp.reference_mw for _, sp in positions]
    reference = max(set(references), key=references.count)
    for bid_id in bid_ids:
        direction = directions.get(bid_id)
        values = [sp.bid_deltas_mw[bid_id] for _, sp in positions if bid_id in sp.bid_deltas_mw]
        if direction is None:
            direction = Direction.DOWN if all(v <= 0 for v in values) else Direction.UP
        ts = w.el(w.root, "TimeSeries")
        w.el(ts, "mRID", bid_id)
        w.mrid(ts, "resourceProvider_MarketParticipant.mRID", first.bsp_id, MAX_PARTY, "BSP")
        w.el(ts, "businessType", BUSINESS_ACTIVATED[first.process])
        w.mrid(ts, "acquiring_Domain.mRID", area, MAX_AREA, "area")
        w.mrid(ts, "connecting_Domain.mRID", area, MAX_AREA, "area")
        w.el(ts, "measurement_Unit.name", MEASUREMENT_UNIT_MW)
        w.el(ts, "flowDirection.direction", direction.value)
        w.el(ts, "marketObjectStatus.status", STATUS_ACTIVATED)
        period = w.el(ts, "Period")
        w.interval(period, "timeInterval", isp_start, _isp_end(isp_start))
        w.el(period, "resolution", first.resolution.value)
        sign = -1.0 if direction == Direction.DOWN else 1.0
        for position, sp in positions:
            if bid_id not in sp.bid_deltas_mw:
                continue
            value = sp.bid_deltas_mw[bid_id] * sign
            point = w.el(period, "Point")
            w.el(point, "position", str(position))
            w.el(point, "quantity", _decimal(abs(value)))
            w.complementary(
                point,
                {
                    "reference_mw": sp.reference_mw if sp.reference_mw != reference else None,
                    "delta_mw": sp.delta_mw if sp.delta_mw != math.fsum(sp.bid_deltas_mw.values()) else None,
                    "against_direction": "true" if value < 0 else None,
                },
            )
        w.complementary(ts, {"cycle_offset": cycle_offset, "reference_mw": reference})
    return w.bytes()


def _resolution_s(resolution: Resolution | str) -> int:
    match = re.fullmatch(r"PT(?:(\d+)M)?(?:(\d+)S)?", str(resolution))
    if not match or not any(match.groups()):
        raise DocumentError(f"resolution {resolution!r} is not PTnM or PTnS")
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


# --- reading -------------------------------------------------------------------------------------


@dataclass
class Document:
    """A document read back: who sent it to whom, when, and the contract bodies it carries."""

    kind: str
    mrid: str
    revision: int
    sender: Party
    receiver: Party
    created: datetime
    bodies: list[Body]

    def message_id(self, index: int) -> uuid.UUID:
        """A message id for the ``index``-th body, the same each time the document is read."""
        return uuid.uuid5(uuid.NAMESPACE_URL, f"urn:esmp:{self.kind}:{self.mrid}:{self.revision}:{index}")


class _Reader:
    def __init__(self, root: ET.Element, coding: Coding):
        self.root = root
        self.ns = root.tag[1:].split("}")[0] if root.tag.startswith("{") else ""
        self.coding = coding

    def q(self, name: str) -> str:
        return f"{{{self.ns}}}{name}" if self.ns else name

    def path(self, node: ET.Element) -> str:
        return node.tag.split("}")[-1]

    def opt(self, node: ET.Element, name: str) -> str | None:
        child = node.find(self.q(name))
        return None if child is None or child.text is None else child.text.strip()

    def req(self, node: ET.Element, name: str) -> str:
        value = self.opt(node, name)
        if value is None or value == "":
            raise DocumentError(f"{self.path(node)}: {name} is missing")
        return value

    def all(self, node: ET.Element, name: str) -> list[ET.Element]:
        return node.findall(self.q(name))

    def num(self, node: ET.Element, name: str, default: float | None = None) -> float:
        text = self.opt(node, name)
        if text is None:
            if default is None:
                raise DocumentError(f"{self.path(node)}: {name} is missing")
            return default
        try:
            value = float(Decimal(text))
        except ArithmeticError:
            raise DocumentError(f"{self.path(node)}: {name} {text!r} is not a decimal number") from None
        if not math.isfinite(value):
            raise DocumentError(f"{self.path(node)}: {name} {text!r} is not a finite number")
        return value

    def integer(self, node: ET.Element, name: str) -> int:
        text = self.req(node, name)
        if not re.fullmatch(r"\d{1,9}", text):
            raise DocumentError(f"{self.path(node)}: {name} {text!r} is not a whole number")
        return int(text)

    def time(self, node: ET.Element, name: str) -> datetime:
        text = self.req(node, name)
        for fmt in ("%Y-%m-%dT%H:%MZ", "%Y-%m-%dT%H:%M:%SZ"):
            try:
                return datetime.strptime(text, fmt).replace(tzinfo=UTC)
            except ValueError:
                continue
        raise DocumentError(f"{self.path(node)}: {name} {text!r} is not YYYY-MM-DDTHH:MM[:SS]Z")

    def interval(self, node: ET.Element, name: str) -> tuple[datetime, datetime]:
        child = node.find(self.q(name))
        if child is None:
            raise DocumentError(f"{self.path(node)}: {name} is missing")
        return self.time(child, "start"), self.time(child, "end")

    def party_id(self, node: ET.Element, name: str) -> str:
        return self.coding.contract_id(self.req(node, name), f"{self.path(node)}: {name}")

    def party(self, prefix: str) -> Party:
        role_code = self.req(self.root, f"{prefix}_MarketParticipant.marketRole.type")
        if role_code not in ROLES:
            raise DocumentError(
                f"{prefix}_MarketParticipant.marketRole.type {role_code!r} is none of the contract's roles "
                f"({', '.join(f'{c} {r}' for c, r in ROLES.items())})"
            )
        return Party(role=ROLES[role_code], id=self.party_id(self.root, f"{prefix}_MarketParticipant.mRID"))  # type: ignore[arg-type]

    def complementary(self, node: ET.Element) -> dict[str, str]:
        values: dict[str, str] = {}
        for reason in self.all(node, "Reason"):
            if self.opt(reason, "code") == COMPLEMENTARY:
                for pair in (self.opt(reason, "text") or "").split(";"):
                    key, sep, value = pair.partition("=")
                    if sep:
                        values[key.strip()] = value.strip()
        return values

    def codes(self, node: ET.Element) -> list[tuple[str, str | None]]:
        return [(self.req(r, "code"), self.opt(r, "text")) for r in self.all(node, "Reason")]


def _float(values: Mapping[str, str], key: str, where: str, default: float | None = None) -> float | None:
    if key not in values:
        return default
    try:
        value = float(Decimal(values[key]))
    except ArithmeticError:
        raise DocumentError(f"{where}: complementary {key}={values[key]!r} is not a number") from None
    if not math.isfinite(value):
        raise DocumentError(f"{where}: complementary {key}={values[key]!r} is not a finite number")
    return value


def _direction(text: str, where: str) -> Direction:
    try:
        return Direction(text)
    except ValueError:
        raise DocumentError(f"{where}: direction {text!r} is neither A01 (up) nor A02 (down)") from None


def _process(text: str | None, where: str) -> ProcessType:
    try:
        return ProcessType(text or ProcessType.AFRR.value)
    except ValueError:
        raise DocumentError(f"{where}: process type {text!r} is neither A51 (aFRR) nor A47 (mFRR)") from None


def _asset(r: _Reader, ts: ET.Element, share: float, area: str, default_asset: str) -> BidAsset:
    resource = r.opt(ts, "registeredResource.mRID")
    asset_id = r.coding.contract_id(resource, "registeredResource.mRID") if resource else default_asset
    domain = r.opt(ts, "connecting_Domain.mRID")
    dso = r.coding.contract_id(domain, "connecting_Domain.mRID") if domain and domain != area else None
    return _model(
        BidAsset,
        f"{r.path(ts)} {r.opt(ts, 'mRID') or r.opt(ts, 'auction.mRID')}",
        asset_id=asset_id,
        connection="DN" if dso else "TN",
        dso_id=dso,
        connection_bus=r.complementary(ts).get("connection_bus"),
        share_mw=share,
    )


def _single_point(r: _Reader, ts: ET.Element, where: str) -> ET.Element:
    periods = r.all(ts, "Period")
    points = [p for period in periods for p in r.all(period, "Point")]
    if len(periods) != 1 or len(points) != 1:
        raise DocumentError(f"{where}: expected one Period with one Point (an ISP's bid), got {len(points)} points")
    return points[0]


def _read_bids(r: _Reader) -> list[Body]:
    process = _process(r.opt(r.root, "process.processType"), "process.processType")
    isp_start, _ = r.interval(r.root, "reserveBid_Period.timeInterval")
    area = r.req(r.root, "domain.mRID")
    groups: dict[str, list[ET.Element]] = defaultdict(list)
    for ts in r.all(r.root, "Bid_TimeSeries"):
        groups[r.opt(ts, "multipartBidIdentification") or r.req(ts, "mRID")].append(ts)
    if not groups:
        raise DocumentError("ReserveBid_MarketDocument: no Bid_TimeSeries")
    bodies: list[Body] = []
    for bid_ref, components in groups.items():
        bid_id = r.coding.contract_id(bid_ref, "bid mRID")
        where = f"Bid_TimeSeries {bid_ref}"
        first = components[0]
        points = [_single_point(r, ts, where) for ts in components]
        shares = [r.num(p, "quantity.quantity") for p in points]
        extra = r.complementary(first)
        quantity = _float(extra, "quantity_mw", where, math.fsum(shares)) or 0.0
        minimum = r.num(points[0], "minimum_Quantity.quantity", quantity if r.opt(first, "divisible") == NO else 0.0)
        price = r.num(points[0], "energy_Price.amount", r.num(points[0], "price.amount", float("nan")))
        if math.isnan(price):
            raise DocumentError(f"{where}: Point has neither energy_Price.amount nor price.amount")
        duration = r.opt(first, "activation_ConstraintDuration.duration")
        if duration is None:
            raise DocumentError(
                f"{where}: activation_ConstraintDuration.duration is missing; the contract needs the bid's ramp "
                "(its quantity over the time to full activation)"
            )
        ramp = quantity / (_duration_seconds(duration, where) / 60)
        provider = r.opt(first, "provider_MarketParticipant.mRID")
        bsp_id = r.coding.contract_id(provider, "provider_MarketParticipant.mRID") if provider else None
        bodies.append(
            _model(
                EnergyBid,
                where,
                bid_id=bid_id,
                bsp_id=bsp_id or r.party("sender").id,
                process=process,
                direction=_direction(r.req(first, "flowDirection.direction"), where),
                isp_start=isp_start,
                quantity_mw=quantity,
                min_quantity_mw=minimum,
                price_eur_per_mwh=price,
                reference_mw=_float(extra, "reference_mw", where, 0.0),
                ramp_rate_mw_per_min=ramp,
                assets=[_asset(r, ts, s, area, bid_id) for ts, s in zip(components, shares, strict=True)],
            )
        )
    return bodies


def _duration_seconds(text: str, where: str) -> float:
    match = re.fullmatch(r"P(?:(\d+)D)?T?(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?", text)
    if not match or not any(match.groups()):
        raise DocumentError(f"{where}: duration {text!r} is not an ISO 8601 duration such as PT10M or PT600S")
    d, h, m, s = match.groups()
    seconds = int(d or 0) * 86400 + int(h or 0) * 3600 + int(m or 0) * 60 + float(Decimal(s or "0"))
    if seconds <= 0:
        raise DocumentError(f"{where}: duration {text!r} is not positive")
    return seconds


def _read_mol(r: _Reader) -> list[Body]:
    isp_start, _ = r.interval(r.root, "period.timeInterval")
    area = r.opt(r.root, "domain.mRID") or ""
    groups: dict[str, list[ET.Element]] = defaultdict(list)
    for ts in r.all(r.root, "TimeSeries"):
        groups[r.req(ts, "marketAgreement.mRID")].append(ts)
    entries = []
    for bid_ref, components in groups.items():
        where = f"TimeSeries {bid_ref}"
        first = components[0]
        points = [_single_point(r, ts, where) for ts in components]
        shares = [r.num(p, "quantity.quantity") for p in points]
        extra = r.complementary(first)
        quantity = _float(extra, "quantity_mw", where, math.fsum(shares)) or 0.0
        bid_id = r.coding.contract_id(bid_ref, "marketAgreement.mRID")
        entries.append(
            _model(
                MolEntry,
                where,
                rank=r.integer(first, "priority"),
                bid_id=bid_id,
                bsp_id=r.party_id(first, "resourceProvider_MarketParticipant.mRID"),
                direction=_direction(r.req(first, "direction"), where),
                price_eur_per_mwh=r.num(points[0], "energy_Price.amount"),
                quantity_mw=quantity,
                lower_bound_mw=r.num(first, "minimumActivation_Quantity.quantity", 0.0),
                upper_bound_mw=_float(extra, "upper_bound_mw", where, quantity),
                assets=[_asset(r, ts, s, area, bid_id) for ts, s in zip(components, shares, strict=True)],
            )
        )
    return [
        _model(
            MeritOrderList,
            "MeritOrderList_MarketDocument",
            mol_id=r.coding.contract_id(r.req(r.root, "mRID"), "mRID"),
            process=_process(r.opt(r.root, "process.processType"), "process.processType"),
            isp_start=isp_start,
            iteration=r.integer(r.root, "revisionNumber"),
            bids=entries,
        )
    ]


def _read_availability(r: _Reader) -> list[Body]:
    results = []
    mol_ids = set()
    iteration = None
    for ts in r.all(r.root, "BidTimeSeries"):
        bid_ref = r.req(ts, "mRID")
        where = f"BidTimeSeries {bid_ref}"
        mol_ids.add(r.req(ts, "bidDocument_MarketDocument.mRID"))
        iteration = r.integer(ts, "bidDocument_MarketDocument.revisionNumber")
        statuses = [(c, t) for c, t in r.codes(ts) if c in VALIDATION_STATUS]
        if len(statuses) != 1:
            raise DocumentError(
                f"{where}: expected one Reason with the verdict (A73 accepted, A44 limited, B09 rejected), "
                f"got {len(statuses)}"
            )
        code, text = statuses[0]
        extra = r.complementary(ts)
        results.append(
            _model(
                BidValidation,
                where,
                bid_id=r.coding.contract_id(bid_ref, "mRID"),
                status=VALIDATION_STATUS[code],
                lower_bound_mw=_float(extra, "lower_bound_mw", where, 0.0),
                upper_bound_mw=r.num(ts, "operationalLimit_Quantity.quantity"),
                limiting_element=extra.get("limiting_element"),
                loading_percent=_float(extra, "loading_percent", where),
                voltage_pu=_float(extra, "voltage_pu", where),
                reason=text,
            )
        )
    if len(mol_ids) != 1 or iteration is None:
        raise DocumentError(
            f"BidAvailability_MarketDocument: expected bids of one merit order list, got {sorted(mol_ids)}"
        )
    sender = r.party("sender")
    return [
        _model(
            MolValidation,
            "BidAvailability_MarketDocument",
            mol_id=r.coding.contract_id(mol_ids.pop(), "bidDocument_MarketDocument.mRID"),
            iteration=iteration,
            dso_id=sender.id,
            results=results,
        )
    ]


def _read_allocation(r: _Reader) -> list[Body]:
    isp_start, _ = r.interval(r.root, "reserveBid_Period.timeInterval")
    accepted, rejected = [], []
    for ts in r.all(r.root, "TimeSeries"):
        bid_ref = r.req(ts, "mRID")
        where = f"TimeSeries {bid_ref}"
        bid_id = r.coding.contract_id(bid_ref, "mRID")
        codes = [c for c, _ in r.codes(ts)]
        if NOT_ACCEPTED in codes:
            rejected.append(bid_id)
            continue
        point = _single_point(r, ts, where)
        accepted.append(
            _model(
                AcceptedOffer,
                where,
                bid_id=bid_id,
                direction=_direction(r.req(ts, "flowDirection.direction"), where),
                lower_bound_mw=r.num(ts, "minimumActivation_Quantity.quantity", 0.0),
                upper_bound_mw=r.num(point, "quantity"),
            )
        )
    return [
        _model(
            OfferAcceptance,
            "ReserveAllocationResult_MarketDocument",
            isp_start=isp_start,
            accepted=accepted,
            rejected_bid_ids=rejected,
        )
    ]


def _read_activation(r: _Reader) -> list[Body]:
    process = _process(r.opt(r.root, "process.processType"), "process.processType")
    receiver = r.party("receiver")
    by_position: dict[int, dict[str, Any]] = defaultdict(lambda: {"bid_deltas_mw": {}})
    resolution = None
    start = None
    for ts in r.all(r.root, "TimeSeries"):
        bid_ref = r.req(ts, "mRID")
        where = f"TimeSeries {bid_ref}"
        bid_id = r.coding.contract_id(bid_ref, "mRID")
        bsp = r.party_id(ts, "resourceProvider_MarketParticipant.mRID")
        if bsp != receiver.id:
            raise DocumentError(f"{where}: resource provider {bsp} is not the receiver {receiver.id}")
        sign = -1.0 if _direction(r.req(ts, "flowDirection.direction"), where) == Direction.DOWN else 1.0
        extra = r.complementary(ts)
        offset = int(_float(extra, "cycle_offset", where, 0.0) or 0)
        reference = _float(extra, "reference_mw", where, 0.0)
        for period in r.all(ts, "Period"):
            period_start, _ = r.interval(period, "timeInterval")
            res = r.req(period, "resolution")
            if resolution not in (None, res) or start not in (None, period_start):
                raise DocumentError(f"{where}: every series must share one period and resolution")
            resolution, start = res, period_start
            step = _resolution_s(res)
            for point in r.all(period, "Point"):
                position = r.integer(point, "position")
                if not 1 <= position <= 100_000:
                    raise DocumentError(f"{where}: position {position} is out of range")
                point_extra = r.complementary(point)
                value = r.num(point, "quantity") * sign
                if point_extra.get("against_direction") == "true":
                    value = -value
                row = by_position[position]
                row["bid_deltas_mw"][bid_id] = value
                row["instant"] = period_start + timedelta(seconds=step * (position - 1))
                row["cycle"] = offset + position
                row.setdefault("reference_mw", _float(point_extra, "reference_mw", where, reference))
                delta = _float(point_extra, "delta_mw", where)
                if delta is not None:
                    row["delta_mw"] = delta
    bodies: list[Body] = []
    for position in sorted(by_position):
        row = by_position[position]
        row.setdefault("delta_mw", math.fsum(row["bid_deltas_mw"].values()))
        bodies.append(
            _model(
                DeltaSetpoint,
                f"Point {position}",
                bsp_id=receiver.id,
                process=process,
                resolution=resolution,
                **row,
            )
        )
    return bodies


READERS: dict[str, Callable[[_Reader], list[Body]]] = {
    "ReserveBid_MarketDocument": _read_bids,
    "MeritOrderList_MarketDocument": _read_mol,
    "BidAvailability_MarketDocument": _read_availability,
    "ReserveAllocationResult_MarketDocument": _read_allocation,
    "Activation_MarketDocument": _read_activation,
}


def _model(cls: type[Any], where: str, **values: Any) -> Any:
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise DocumentError(f"{where}: {loc}: {first['msg']} (the contract's {cls.__name__})") from None


def read_document(data: bytes, coding: Coding | None = None) -> Document:
    """Read one ENTSO-E document into contract bodies; :class:`DocumentError` says what is wrong."""
    coding = coding or Coding()
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentError(f"the document is {len(data)} bytes, over the {MAX_DOCUMENT_BYTES} read")
    try:
        root = fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise DocumentError(f"refused: {exc} (entities and DTDs are not read)") from None
    except ET.ParseError as exc:
        raise DocumentError(f"not well-formed XML: {exc}") from None
    name = root.tag.split("}")[-1]
    if name not in READERS:
        raise DocumentError(f"{name} is not a document this testbed maps; known: {', '.join(READERS)}")
    r = _Reader(root, coding)
    kind = r.req(root, "type")
    if kind != DOCUMENT_TYPE[name] and not (name == "Activation_MarketDocument" and kind in ("A39", "A40")):
        raise DocumentError(f"{name}: type {kind!r}, expected {DOCUMENT_TYPE[name]}")
    return Document(
        kind=name,
        mrid=r.req(root, "mRID"),
        revision=r.integer(root, "revisionNumber"),
        sender=r.party("sender"),
        receiver=r.party("receiver"),
        created=r.time(root, "createdDateTime"),
        bodies=READERS[name](r),
    )
