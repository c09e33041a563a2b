"""CoreBase's default pool autoscaling strategy, registered as an ordinary plugin.

Registered with ``trylast=True``, so an installed plugin's strategy replaces it.
"""

from __future__ import annotations

import math

from corebase import hookimpl
from corebase.pool.strategy import PoolDemand
from corebase.settings import Settings


class PeakDemandStrategy:
    """Keep as many idle members as the busiest recent bucket of claims needed.

    A bucket is a slice of the demand window long enough to warm new members, so the pool keeps
    what one burst takes before refills can catch up. Misses add to the busiest bucket, because
    each one is a claim the pool was too small for. With no claims in the window the target falls
    back to min_idle.
    """

    name = "peak-demand"

    def target(self, demand: PoolDemand) -> int:
        busiest = max(demand.claims_per_bucket, default=0)
        needed = busiest + (1 if demand.misses else 0)
        return max(demand.min_idle, min(demand.max_idle, math.ceil(needed)))


@hookimpl(trylast=True)
def corebase_pool_strategy(settings: Settings) -> PeakDemandStrategy:
    return PeakDemandStrategy()
