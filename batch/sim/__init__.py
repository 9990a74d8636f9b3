"""A fal-compatible local queue simulator (fal-protocol.md), with a seeded fault plan.

    async with Simulator(SimConfig(capacity=2, latency="uniform:0.1,0.3")) as sim:
        sim.url, sim.key, sim.counters, sim.jobs

Modules: `config` (SimConfig, Latency, Price), `faults` (FaultPlan, FaultRule), `counters`,
`paths`, `jobs` (records, outcomes, status bodies), `model` (queue, slots, fal's retries),
`worker` (one attempt of a job), `billing` (prices, balance, the charge per request),
`gateway` (counting, faults and auth middlewares), `app` (routes), `submits` (reading a
submit's headers and parameters), `history` (the Platform API's request history), `server`
(Simulator, run_forever), `tls`, `clock` (the simulator's wall clock; `ManualClock` for
tests); `imaging` makes the pixels, `filestore` keeps the files, `storage` and
`storage_initiate` serve fal's upload flows.

It imports only `batch.schema` and `batch.errors` of the package, so it runs and is tested
alone.
"""

from batch.sim.billing import LOCKED_DETAIL, Billing
from batch.sim.clock import Clock, ManualClock
from batch.sim.config import Latency, Price, SimConfig
from batch.sim.counters import Counters, payload_hash
from batch.sim.faults import FaultPlan, FaultRule
from batch.sim.jobs import JobRecord
from batch.sim.server import Simulator, run_forever, serve

__all__ = [
    "LOCKED_DETAIL",
    "Billing",
    "Clock",
    "Counters",
    "FaultPlan",
    "FaultRule",
    "JobRecord",
    "Latency",
    "ManualClock",
    "Price",
    "SimConfig",
    "Simulator",
    "payload_hash",
    "run_forever",
    "serve",
]
