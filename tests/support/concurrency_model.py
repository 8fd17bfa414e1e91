"""A small pure-Python model of membership changes, and a checker that compares the system with it.

Concurrent batches are applied by the system in some serial order that the test cannot see. The checker asks, for
each (audience, user), whether some order of the accepted batches that touched it, consistent with real time (a batch
answered before another one was sent comes first), leads from no membership to the state the database ended with.
That is linearizability per key; each key has a handful of batches, so a search over the orders is cheap.

The workload keeps each key independent of the others: a join always carries fresh identities (so it always joins,
or changes the identities of a member, and is restamped) and a leave carries none. Identity changes propagated to a
user's other audiences change no membership state there (contract section 14).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

# None: no membership row; else (is_member, last_changed_timestamp).
State = tuple[bool, int] | None


@dataclass(frozen=True)
class Change:
    is_member: bool
    timestamp: int


@dataclass
class KeyOp:
    """One accepted batch, as seen by one (audience, user): its changes to that key, in request order."""

    started: float
    ended: float
    changes: tuple[Change, ...]


def change_applied(state: State, change: Change) -> State:
    """Contract section 4: a stale change (older than the last applied one) is ignored; a join with fresh identities
    joins, or changes the identities of a member; a leave of a member leaves; a leave of a non-member is ignored."""
    if state is not None and change.timestamp < state[1]:
        return state
    if change.is_member:
        return (True, change.timestamp)
    if state is not None and state[0]:
        return (False, change.timestamp)
    return state


def ops_applied(state: State, changes: tuple[Change, ...]) -> State:
    for change in changes:
        state = change_applied(state, change)
    return state


def explains(ops: list[KeyOp], final: State) -> bool:
    """Whether some serial order of `ops` consistent with real time leads from None to `final`."""
    count = len(ops)
    before = [0] * count  # bit j set: op j answered before op i was sent, so j comes first
    for i, op in enumerate(ops):
        for j, other in enumerate(ops):
            if other.ended < op.started:
                before[i] |= 1 << j
    everything = (1 << count) - 1

    @cache
    def search(done: int, state: State) -> bool:
        if done == everything:
            return state == final
        for i in range(count):
            bit = 1 << i
            if not done & bit and before[i] & done == before[i]:
                if search(done | bit, ops_applied(state, ops[i].changes)):
                    return True
        return False

    return search(0, None)


@dataclass
class History:
    """What the clients did and what the system answered."""

    key_ops: dict[tuple[int, str], list[KeyOp]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)

    def batch_accepted(self, audience_id: int, changes: list[tuple[str, Change]], started: float, ended: float):
        by_key: dict[tuple[int, str], list[Change]] = {}
        for user_id, change in changes:
            by_key.setdefault((audience_id, user_id), []).append(change)
        for key, key_changes in by_key.items():
            self.key_ops.setdefault(key, []).append(KeyOp(started, ended, tuple(key_changes)))

    def mismatches(self, final_states: dict[tuple[int, str], State]) -> list[str]:
        """Keys whose final state in the database no real-time order of their accepted batches explains."""
        found = []
        for key in sorted(set(self.key_ops) | set(final_states)):
            ops = self.key_ops.get(key, [])
            final = final_states.get(key)
            if not explains(ops, final):
                found.append(f"{key}: the database holds {final}, after {[op.changes for op in ops]}")
        return found
