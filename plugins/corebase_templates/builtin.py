"""The six built-in templates: Node.js, Python, PostgreSQL, Redis, Nginx and Ubuntu."""

from __future__ import annotations

from corebase.runtime.types import HealthCheck
from corebase.templates import TemplateSpec

MIB = 1024 * 1024

# Keeps a language runtime's container alive for exec sessions without running a server.
IDLE_COMMAND = ["sleep", "infinity"]

BUILTIN_TEMPLATES = (
    TemplateSpec(
        name="node",
        category="runtime",
        image="node:22.11-bookworm-slim",
        description="Node.js 22 LTS with npm, idle until you exec into it.",
        command=IDLE_COMMAND,
        env={"NODE_ENV": "development"},
        ports=[3000],
        memory=512 * MIB,
        cpus=1.0,
        max_memory=4096 * MIB,
        max_cpus=4.0,
        healthcheck=HealthCheck(test=["node", "--version"], interval=2.0, timeout=5.0, retries=3),
        workdir="/workspace",
    ),
    TemplateSpec(
        name="python",
        category="runtime",
        image="python:3.12.7-slim-bookworm",
        description="Python 3.12 with pip, idle until you exec into it.",
        command=IDLE_COMMAND,
        env={"PYTHONUNBUFFERED": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        ports=[8000],
        memory=512 * MIB,
        cpus=1.0,
        max_memory=4096 * MIB,
        max_cpus=4.0,
        healthcheck=HealthCheck(test=["python", "-c", "pass"], interval=2.0, timeout=5.0, retries=3),
        workdir="/workspace",
    ),
    TemplateSpec(
        name="postgres",
        category="database",
        image="postgres:16.4-bookworm",
        description="PostgreSQL 16 with a generated password for the user 'app' and a database 'app'.",
        env={"POSTGRES_USER": "app", "POSTGRES_DB": "app"},
        generated_env=["POSTGRES_PASSWORD"],
        ports=[5432],
        memory=512 * MIB,
        cpus=1.0,
        max_memory=8192 * MIB,
        max_cpus=4.0,
        healthcheck=HealthCheck(
            test=["pg_isready", "-U", "app", "-d", "app"], interval=2.0, timeout=5.0, retries=15, start_period=5.0
        ),
    ),
    TemplateSpec(
        name="redis",
        category="database",
        image="redis:7.4.1-bookworm",
        description="Redis 7.4 that requires a generated password; the server reads it from REDIS_PASSWORD.",
        command=["sh", "-c", 'exec redis-server --appendonly yes --requirepass "$REDIS_PASSWORD"'],
        generated_env=["REDIS_PASSWORD"],
        ports=[6379],
        memory=256 * MIB,
        cpus=0.5,
        max_memory=4096 * MIB,
        max_cpus=2.0,
        healthcheck=HealthCheck(
            test=["sh", "-c", 'redis-cli -a "$REDIS_PASSWORD" --no-auth-warning ping | grep -q PONG'],
            interval=2.0,
            timeout=5.0,
            retries=10,
        ),
    ),
    TemplateSpec(
        name="nginx",
        category="static",
        image="nginx:1.27.2-bookworm",
        description="Nginx 1.27 serving /usr/share/nginx/html on port 80.",
        ports=[80],
        memory=128 * MIB,
        cpus=0.5,
        max_memory=1024 * MIB,
        max_cpus=2.0,
        healthcheck=HealthCheck(test=["nginx", "-t", "-q"], interval=2.0, timeout=5.0, retries=3),
    ),
    TemplateSpec(
        name="ubuntu",
        category="system",
        image="ubuntu:24.04",
        description="Ubuntu 24.04 LTS shell environment, idle until you exec into it.",
        command=IDLE_COMMAND,
        memory=512 * MIB,
        cpus=1.0,
        max_memory=4096 * MIB,
        max_cpus=4.0,
        healthcheck=HealthCheck(test=["sh", "-c", "exit 0"], interval=2.0, timeout=5.0, retries=3),
    ),
)
