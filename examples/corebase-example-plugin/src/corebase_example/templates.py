"""The `busybox-httpd` template: a static web server small enough to start in a second."""

from __future__ import annotations

from corebase.runtime.types import HealthCheck
from corebase.templates import TemplateSpec

MIB = 1024 * 1024

# Writes a start page, then runs httpd in the foreground so the container lives as long as it does.
SERVE_WWW = "mkdir -p /www && echo 'hello from busybox-httpd' > /www/index.html && exec httpd -f -v -p 8080 -h /www"

BUSYBOX_HTTPD = TemplateSpec(
    name="busybox-httpd",
    category="static",
    image="busybox:1.36.1",
    description="BusyBox httpd serving /www on port 8080; exec into it to add files.",
    command=["sh", "-c", SERVE_WWW],
    ports=[8080],
    memory=64 * MIB,
    cpus=0.25,
    max_memory=256 * MIB,
    max_cpus=1.0,
    healthcheck=HealthCheck(
        test=["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"], interval=2.0, timeout=5.0, retries=5
    ),
)
