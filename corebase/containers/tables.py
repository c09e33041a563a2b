"""The containers table: what CoreBase intends to exist, beside the engine's own id."""

from piccolo.columns import JSON, BigInt, Boolean, Integer, Real, Text, Timestamptz, Varchar
from piccolo.table import Table

# Statuses a row can have: the engine's own, plus "creating" (row written, engine not done yet),
# "failed" (a start that did not complete, with the reason in `error`) and "removed".
# A pool member has `pool` set and a `pool_state` of "warming", "idle" or "retiring". When a
# caller claims it, `pool_state` becomes null and `source` is "pool".
ACTIVE_STATUSES = ("creating", "created", "running", "paused", "restarting", "exited", "dead")


class Container(Table, tablename="containers"):
    id = Varchar(length=32, primary_key=True)
    docker_id = Varchar(length=64, null=True, default=None, index=True)
    name = Varchar(length=128, index=True)
    image = Varchar(length=512)
    template = Varchar(length=128, null=True, default=None)
    template_version = Integer(null=True, default=None)
    project_id = Varchar(length=128, null=True, default=None, index=True)
    owner = Varchar(length=200, index=True)
    status = Varchar(length=20, index=True)
    exit_code = Integer(null=True, default=None)
    oom_killed = Boolean(default=False)
    error = Text(null=True, default=None)
    command = JSON(null=True, default=None)
    labels = JSON(default="{}")
    ports = JSON(default="[]")
    tty = Boolean(default=False)
    memory = BigInt(null=True, default=None)
    nano_cpus = BigInt(null=True, default=None)
    pids_limit = Integer(null=True, default=None)
    created_at = Timestamptz()
    updated_at = Timestamptz()
    started_at = Timestamptz(null=True, default=None)
    finished_at = Timestamptz(null=True, default=None)
    removed_at = Timestamptz(null=True, default=None)
    # "cold" for a container created for its request, "pool" for one claimed from a pool.
    source = Varchar(length=8, null=True, default=None)
    pool = Varchar(length=128, null=True, default=None, index=True)
    pool_state = Varchar(length=16, null=True, default=None, index=True)
    # Secrets generated for a pool member's template, kept only until the member is claimed.
    pending_credentials = JSON(null=True, default=None)
    claimed_at = Timestamptz(null=True, default=None)
    # Milliseconds the claim took inside the server, for the pool's latency figures.
    claim_ms = Real(null=True, default=None)
    # "standard" (runc with the hardened defaults) or "sandboxed" (gVisor's runsc).
    isolation = Varchar(length=16, default="standard")
    # The engine network the container joined: its owner's CoreBase network, or "none".
    network = Varchar(length=128, null=True, default=None)
    # Timers that the lifecycle loop (corebase.containers.lifecycle) acts on. `ttl` and
    # `idle_timeout` are seconds; `expires_at` is the start time plus `ttl`.
    ttl = Real(null=True, default=None)
    expires_at = Timestamptz(null=True, default=None, index=True)
    idle_timeout = Real(null=True, default=None)
    last_activity_at = Timestamptz(null=True, default=None)
    # Remove the container, and mark its row removed, once it has exited.
    auto_remove = Boolean(default=False)
    # The idempotency_keys row of the start request that made it, so a retry after a crash finds it.
    idempotency_key = Varchar(length=64, null=True, default=None, index=True)


def row_values(row: Container) -> dict:
    """Map every column but the primary key to the row's value, for an UPDATE that writes the whole row."""
    return {column: getattr(row, column._meta.name) for column in Container._meta.columns if not column._meta.primary_key}
