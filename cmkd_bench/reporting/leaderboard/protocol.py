"""Which tuning protocol a record was made under, and the rule that tables never mix protocols.

A record made under protocol v2 (issue 30: a fixed budget for every method, the recipe tuned on no-kd,
selection on a dedicated seed that is never reported) carries

    record["protocol"] = {"version": 2, "role": "reported" | "candidate" | "recipe-candidate",
                          "selection_seed": ..., "reported_seeds": [...], "budget": ..., "recipe": {...}}

A record without a "protocol" key is protocol v1 (the records committed before it). Candidates are run on
the selection seed to choose a configuration: they are never a row of any table, only listed where they
failed, labelled as candidates (`grid.candidate_label`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

CANDIDATE_ROLES = ("candidate", "recipe-candidate")
REPORTED = "reported"


def protocol_of(record: dict[str, Any]) -> dict[str, Any]:
    protocol = record.get("protocol")
    return protocol if isinstance(protocol, dict) else {}


def protocol_version(record: dict[str, Any]) -> int:
    """1 for a record without a protocol (or without a readable version), else its version."""
    version = protocol_of(record).get("version")
    try:
        return int(version) if version is not None else 1
    except (TypeError, ValueError):
        return 1


def protocol_role(record: dict[str, Any]) -> str:
    """"reported", "candidate" or "recipe-candidate"; a protocol v1 record is "reported"."""
    return str(protocol_of(record).get("role") or REPORTED)


def is_candidate(record: dict[str, Any]) -> bool:
    """A protocol v2 selection run (of a method's configuration or of the recipe): never a table row."""
    return protocol_version(record) >= 2 and protocol_role(record) in CANDIDATE_ROLES


@dataclass(frozen=True)
class ProtocolSplit:
    version: int  # the protocol every table is made of
    records: list[dict[str, Any]]  # the records of that protocol (candidates included: failed ones are listed)
    left_out: int  # records of older protocols, left out

    def note(self) -> str | None:
        """The one line saying what was left out, or None."""
        if not self.left_out:
            return None
        older = ", ".join(f"v{v}" for v in range(1, self.version))
        records = "record was" if self.left_out == 1 else "records were"
        return (f"{self.left_out} protocol {older} {records} left out: tables hold protocol v{self.version} records "
                "only, never a mix of protocols.")


def split_protocols(records: Sequence[dict[str, Any]]) -> ProtocolSplit:
    """The records of the newest protocol present (v2 if any record is v2), and how many older ones are left out."""
    records = list(records)
    version = max((protocol_version(record) for record in records), default=1)
    kept = [record for record in records if protocol_version(record) == version]
    return ProtocolSplit(version, kept, len(records) - len(kept))


def protocol_title(version: int) -> str:
    """What every results grid's title ends with."""
    return f"protocol v{version}"
