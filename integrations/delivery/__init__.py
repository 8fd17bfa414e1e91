"""The delivery engine: drain a connection's backlog to its stream in batches, in order, and record every outcome.

A connection's backlog is split into shards by user (`Delivery.shard` = user_id % DeliveryLayout.shards). One
drain runs per shard at a time (a `DrainLease`, which expires if its worker dies), so several workers, on several
machines, deliver one connection in parallel. A drain claims its shard's pending deliveries in id order, puts at most
one record per user in a batch, and sends its batches one after another, so each user's records arrive in the order
of that user's changes. Failed entries stay pending and are the first to be claimed again; failed requests set
`Connection.next_attempt_at` with exponential backoff, and the beat sweep resumes the drains when it is due.

Every batch first takes its place under the connection's rate limit (records/s and bytes/s, the region's quota
unless set lower), scaled by `Connection.send_rate`: halved when the stream throttles, raised a step per accepted
batch (AIMD), so that the producer avoids throttling instead of only retrying it.

The stages, one module each, in the order a batch goes through them (`drain.connection_drain`):
`lease` → `claim` → `ratelimit` → `send` → `settle`; `resync` queues a running resync's pages, `sweep` recovers
lost kicks. `batch` holds what they pass to each other, and what each of them reads of the connection.
"""

from .batch import DrainReport
from .drain import connection_drain
from .sweep import connections_sweep

__all__ = ["DrainReport", "connection_drain", "connections_sweep"]
