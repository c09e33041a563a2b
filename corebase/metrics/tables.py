"""Stored metric samples: raw readings (resolution 0) and rollups (resolution = the rollup step)."""

from piccolo.columns import BigInt, Integer, Real, Timestamptz, Varchar
from piccolo.table import Table


class RuntimeMetric(Table, tablename="runtime_metrics"):
    """One reading of a container, or the average and maximum of the readings in one rollup step.

    `epoch` is `recorded_at` in whole Unix seconds (the step's start for a rollup), so history
    queries group rows into steps with plain integer arithmetic on SQLite and PostgreSQL alike.
    Network and block I/O counters are cumulative; a rollup keeps the last value of its step.
    """

    container_id = Varchar(length=32, index=True)
    recorded_at = Timestamptz(index=True)
    epoch = BigInt(default=0)
    resolution = Integer(default=0)
    samples = Integer(default=1)
    cpu_percent = Real(null=True, default=None)
    cpu_percent_max = Real(null=True, default=None)
    memory_bytes = BigInt(default=0)
    memory_max_bytes = BigInt(default=0)
    memory_limit_bytes = BigInt(default=0)
    network_rx_bytes = BigInt(default=0)
    network_tx_bytes = BigInt(default=0)
    block_read_bytes = BigInt(default=0)
    block_write_bytes = BigInt(default=0)
    pids = Integer(default=0)
