"""Stored metric samples, one row per container reading."""

from piccolo.columns import BigInt, Integer, Real, Timestamptz, Varchar
from piccolo.table import Table


class RuntimeMetric(Table, tablename="runtime_metrics"):
    container_id = Varchar(length=32, index=True)
    recorded_at = Timestamptz(index=True)
    cpu_percent = Real(null=True, default=None)
    memory_bytes = BigInt(default=0)
    memory_limit_bytes = BigInt(default=0)
    network_rx_bytes = BigInt(default=0)
    network_tx_bytes = BigInt(default=0)
    block_read_bytes = BigInt(default=0)
    block_write_bytes = BigInt(default=0)
    pids = Integer(default=0)
