"""A run's market as ENTSO-E documents, and documents as contract messages.

    tsodso esmp export runs/latest            # -> runs/latest/esmp/*.xml
    tsodso esmp import bids.xml --out bids.jsonl

Export reads the payloads the exchange log kept (``gateway.exchange_log.KEPT_TYPES``): every bid,
merit order list, validation, acceptance and delta setpoint as it was sent. Import turns a document
into the messages it stands for, each checked against the contract as a receiver would
(``schemas.validate``), one wire message per line. The mapping is ``schemas.esmp`` (docs/esmp.md).
"""

import json
import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tsodso.gateway.exchange_log import kept_payloads
from tsodso.schemas.codes import Direction, ProcessType
from tsodso.schemas.envelope import Envelope
from tsodso.schemas.esmp import (
    Coding,
    Document,
    DocumentError,
    activation_document,
    allocation_document,
    availability_document,
    bid_document,
    mol_document,
    read_document,
)
from tsodso.schemas.messages import (
    Body,
    DeltaSetpoint,
    EnergyBid,
    MeritOrderList,
    MolValidation,
    OfferAcceptance,
)
from tsodso.schemas.validate import InvalidMessage, validate_message


@dataclass
class Written:
    """One document written by :func:`export_run`."""

    path: Path
    kind: str
    messages: int


def load_codes(path: Path) -> dict[str, str]:
    """A codes file: YAML or JSON mapping contract ids to their codes (EIC), e.g. ``tso: 10X1001A1001A361``."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DocumentError(f"codes file {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise DocumentError(f"codes file {path}: expected a mapping of id to code, e.g. 'tso: 10X1001A1001A361'")
    return data


def _isp(t: datetime) -> datetime:
    return t.replace(minute=t.minute - t.minute % 15, second=0, microsecond=0)


def _stamp(t: datetime) -> str:
    return t.strftime("%Y%m%dT%H%MZ")


def export_run(run_dir: Path, out: Path, coding: Coding, area: str | None = None) -> tuple[list[Written], list[str]]:
    """Write the run's documents into ``out``; returns what was written and what could not be
    (one line each)."""
    db = run_dir / "exchange.sqlite"
    if not db.is_file():
        raise DocumentError(f"{run_dir} is not a run directory (no exchange.sqlite in it)")
    if area is None:
        area = _scenario_area(run_dir)
    sent: dict[str, list[tuple[Envelope, Any]]] = defaultdict(list)
    try:
        kept = kept_payloads(db)
    except sqlite3.DatabaseError as exc:
        raise DocumentError(f"{db}: not a readable exchange log ({exc})") from None
    for type_name, sent_us, payload in kept:
        try:
            env, body = validate_message(payload)
        except InvalidMessage as exc:
            raise DocumentError(f"{db}: the {type_name} kept at {sent_us} µs breaks the contract: {exc}") from None
        sent[type_name].append((env, body))
    if not sent:
        raise DocumentError(
            f"{db} keeps no market messages (a run of an earlier version, or none were sent): run the scenario again"
        )
    out.mkdir(parents=True, exist_ok=True)
    written: list[Written] = []
    skipped: list[str] = []

    def write(name: str, kind: str, data: bytes, messages: int) -> None:
        path = out / name
        path.write_bytes(data)
        written.append(Written(path, kind, messages))

    directions: dict[str, Direction] = {}
    processes: dict[tuple[str, datetime], ProcessType] = {}
    bid_groups: dict[tuple[str, datetime, ProcessType], list[tuple[Envelope, EnergyBid]]] = defaultdict(list)
    for env, bid in sent["energy_bid"]:
        directions[bid.bid_id] = bid.direction
        processes[(bid.bsp_id, bid.isp_start)] = bid.process
        bid_groups[(bid.bsp_id, bid.isp_start, bid.process)].append((env, bid))
    for (bsp, isp, process), group in bid_groups.items():
        for revision, sending in enumerate(_revisions(group), start=1):
            last_env = sending[-1][0]
            mrid = f"{bsp}-{_stamp(isp)}-bids" + ("" if process == ProcessType.AFRR else f"-{process.value}")
            data = bid_document(
                [b for _, b in sending],
                mrid=mrid,
                revision=revision,
                tso=last_env.recipients[0],
                area=area,
                created=last_env.created_at,
                coding=coding,
            )
            write(f"bids_{mrid}_r{revision}.xml", "ReserveBid_MarketDocument", data, len(sending))

    mols: dict[str, MeritOrderList] = {}
    for env, mol in sent["merit_order_list"]:
        mols[mol.mol_id] = mol
        dso = env.recipients[0]
        data = mol_document(mol, tso=env.sender, dso=dso, area=area, created=env.created_at, coding=coding)
        write(f"mol_{mol.mol_id}_{dso.id}_r{mol.iteration}.xml", "MeritOrderList_MarketDocument", data, 1)

    for env, validation in sent["mol_validation"]:
        assert isinstance(validation, MolValidation)
        mol = mols.get(validation.mol_id)
        if mol is None:
            skipped.append(
                f"validation of {validation.mol_id} by {validation.dso_id}: its merit order list was not kept"
            )
            continue
        try:
            data = availability_document(
                validation, mol=mol, dso=env.sender, tso=env.recipients[0], created=env.created_at, coding=coding
            )
        except DocumentError as exc:
            skipped.append(str(exc))
            continue
        name = f"availability_{validation.mol_id}_{validation.dso_id}_r{validation.iteration}.xml"
        write(name, "BidAvailability_MarketDocument", data, 1)

    revisions: dict[tuple[str, datetime], int] = defaultdict(int)
    for env, acceptance in sent["offer_acceptance"]:
        assert isinstance(acceptance, OfferAcceptance)
        receiver = env.recipients[0]
        revisions[(receiver.id, acceptance.isp_start)] += 1
        revision = revisions[(receiver.id, acceptance.isp_start)]
        mrid = f"{receiver.id}-{_stamp(acceptance.isp_start)}-acceptance"
        data = allocation_document(
            acceptance,
            mrid=mrid,
            revision=revision,
            process=processes.get((receiver.id, acceptance.isp_start), ProcessType.AFRR),
            directions=directions,
            tso=env.sender,
            bsp=receiver,
            area=area,
            created=env.created_at,
            coding=coding,
        )
        write(f"allocation_{mrid}_r{revision}.xml", "ReserveAllocationResult_MarketDocument", data, 1)

    setpoints: dict[tuple[str, datetime], list[tuple[Envelope, DeltaSetpoint]]] = defaultdict(list)
    empty = 0
    for env, sp in sent["delta_setpoint"]:
        assert isinstance(sp, DeltaSetpoint)
        if not sp.bid_deltas_mw:
            empty += 1
            continue
        setpoints[(sp.bsp_id, _isp(sp.instant))].append((env, sp))
    if empty:
        skipped.append(
            f"{empty} delta setpoints named no bid (bid_deltas_mw empty): an activation document has no series for them"
        )
    for (bsp, isp), activations in setpoints.items():
        mrid = f"{bsp}-{_stamp(isp)}-activation"
        data = activation_document(
            [sp for _, sp in activations],
            mrid=mrid,
            isp_start=isp,
            directions=directions,
            tso=activations[-1][0].sender,
            area=area,
            created=activations[-1][0].created_at,
            coding=coding,
        )
        write(f"activation_{mrid}.xml", "Activation_MarketDocument", data, len(activations))
    return written, skipped


def _revisions(group: list[tuple[Envelope, EnergyBid]]) -> list[list[tuple[Envelope, EnergyBid]]]:
    """A BSP's bids for one ISP in the order sent, cut where a bid id comes again: each part is one
    revision of its bid document (a bid sent again replaces the earlier one)."""
    parts: list[list[tuple[Envelope, EnergyBid]]] = [[]]
    for env, bid in group:
        if any(b.bid_id == bid.bid_id for _, b in parts[-1]):
            parts.append([])
        parts[-1].append((env, bid))
    return parts


def _scenario_area(run_dir: Path) -> str:
    path = run_dir / "scenario.yaml"
    try:
        area = yaml.safe_load(path.read_text())["tso"]["area"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        raise DocumentError(f"{path}: no tso.area to name the market area; give --area") from None
    return str(area)


def messages_of(document: Document) -> list[dict[str, Any]]:
    """The wire messages (envelope + body) a document stands for, each validated as a receiver
    validates it. The envelope: the document's sender and receiver, created at its createdDateTime,
    a message id derived from its mRID and revision (the same each time it is read)."""
    messages = []
    for index, body in enumerate(document.bodies):
        env = Envelope(
            message_id=document.message_id(index),
            type=body.type_name,
            schema_version="1.0",
            sender=document.sender,
            recipients=[document.receiver],
            sequence=index + 1,
            created_at=document.created,
        )
        message = {"envelope": env.model_dump(mode="json", exclude_none=True), "body": body.model_dump(mode="json")}
        try:
            validate_message(json.dumps(message))
        except InvalidMessage as exc:  # pragma: no cover - the bodies were built by the contract's models
            raise DocumentError(f"{document.kind}: message {index + 1}: {exc}") from None
        messages.append(message)
    return messages


def import_file(path: Path, coding: Coding) -> tuple[Document, list[dict[str, Any]]]:
    """Read a document file into its contract messages."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DocumentError(f"cannot read it: {exc.strerror or exc}") from None
    document = read_document(data, coding)
    return document, messages_of(document)


def scenario_bids(bodies: list[Body]) -> list[dict[str, Any]]:
    """Energy bids as a scenario's ``bsps[].bids`` entries (docs/scenario.md)."""
    out = []
    for body in bodies:
        if not isinstance(body, EnergyBid):
            continue
        out.append(
            {
                "bid_id": body.bid_id,
                "direction": "up" if body.direction == Direction.UP else "down",
                "quantity_mw": body.quantity_mw,
                "price_eur_per_mwh": body.price_eur_per_mwh,
                "ramp_rate_mw_per_min": body.ramp_rate_mw_per_min,
                "assets": {a.asset_id: a.share_mw for a in body.assets},
            }
        )
    return out
