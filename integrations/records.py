"""The record on the wire (contract section 1): built at sending time, from the connection's current settings."""

import json
from collections.abc import Iterable, Mapping

from audiences.identities import Identities


def identities_forwarded(identities: Mapping[str, str] | None, excluded: Iterable[str]) -> Identities:
    """The identities a connection forwards, in the order the user's identities were given."""
    excluded = set(excluded)
    return {key: value for key, value in (identities or {}).items() if key not in excluded}


def membership_record(
    *,
    timestamp: int,
    audience_id: int,
    audience_name: str,
    is_member: bool,
    identities: Identities,
    append_newline: bool,
) -> bytes:
    data = json.dumps(
        {
            "MembershipChangedTimestamp": str(timestamp),
            "AudienceId": audience_id,
            "AudienceName": audience_name,
            "IsMember": is_member,
            "UserIdentities": identities,
        },
        ensure_ascii=False,
    )
    return (data + "\n" if append_newline else data).encode()


def audience_deleted_record(*, timestamp: int, audience_id: int, audience_name: str, append_newline: bool) -> bytes:
    data = json.dumps(
        {
            "AudienceId": audience_id,
            "AudienceName": audience_name,
            "AudienceDeleted": True,
            "DeletedTimestamp": str(timestamp),
        },
        ensure_ascii=False,
    )
    return (data + "\n" if append_newline else data).encode()


def record_masked(record: bytes) -> str:
    """A record for an alert's sample: the identity values masked (the first two characters kept, so that an operator
    can tell an email from a device id), everything else as sent."""
    try:
        data = json.loads(record)
    except ValueError:
        return "(not JSON)"
    identities = data.get("UserIdentities") if isinstance(data, dict) else None
    if isinstance(identities, dict):
        data["UserIdentities"] = {key: _masked(str(value)) for key, value in identities.items()}
    return json.dumps(data, ensure_ascii=False)


def _masked(value: str) -> str:
    return value[:2] + "*" * min(max(len(value) - 2, 3), 12)
