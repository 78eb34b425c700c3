"""Many hosts: the store's ranges held by Ray actors, reached by learners anywhere in a cluster.

``RayStore`` cuts the flat parameter vector into ``servers`` contiguous ranges (whole 64-byte
blocks, as equal as blocks allow) and starts one ``ShardServer`` actor per range, placed by a
Ray placement group (spread across nodes by default). Each server owns a native ``fastps.Store``
for its range, with the mode, step size and optimizer of the whole store, so staleness and step
sizes are computed per server exactly as a local store computes them. A learner handle pulls
every range in parallel and pushes each range of a gradient (a zero-copy slice) to its server
in parallel. Ray does placement, transport, failure detection and restarts; nothing here opens
a socket.

The package's rooms (docs/ray.md), each using only the public facade (``fastps.store``,
``fastps.config``, ``fastps.buffers``, ``fastps.checkpoint``, ``fastps.step_size``):

- ``session``: ``init`` (connect once, on 127.0.0.1 by default), the servers' actor names,
  and ``gather`` (one call per server, retried while a server restarts).
- ``server``: the ``ShardServer`` actor (its native Store, checkpoints, duplicate and lost
  push accounting: the fault-tolerance rules).
- ``handle``: ``RayLearnerHandle`` (a learner's pull and push, split by range).
- ``store``: ``RayStore`` and ``server_ranges`` (arguments, placement, stats, save and load).

Imports run one way: ``store`` -> ``handle``, ``server``, ``session``; ``handle`` -> ``session``;
``server`` and ``session`` import no other room.
"""

from fastps import extras

extras.require("ray", "fastps.ray")  # the optional dependency: one line naming its extra

from fastps.ray.handle import RayLearnerHandle  # noqa: E402
from fastps.ray.server import ShardServer  # noqa: E402
from fastps.ray.session import init  # noqa: E402
from fastps.ray.store import RayStore, server_ranges  # noqa: E402

__all__ = ["RayLearnerHandle", "RayStore", "ShardServer", "init", "server_ranges"]
