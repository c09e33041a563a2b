"""`corebase containers start|ls|inspect|exec|cp|logs|stop|restart|pause|resume|rm`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

from corebase.cli.context import Context, UsageError, command, identifier
from corebase.cli.copy import run_cp
from corebase.cli.output import Column, ExitCode
from corebase.cli.terminal import run_session
from corebase.client.errors import Conflict

STATUSES = ("creating", "created", "running", "paused", "restarting", "exited", "dead", "failed", "removed")

CONTAINER_COLUMNS: list[Column] = [
    ("ID", lambda record: record.id),
    ("NAME", lambda record: record.name),
    ("IMAGE", lambda record: record.template or record.image),
    ("STATUS", lambda record: _status(record)),
    ("PROJECT", lambda record: record.project_id),
    ("PORTS", lambda record: _ports(record)),
    ("CREATED", lambda record: record.created_at),
]


def register(commands: argparse._SubParsersAction, options: argparse.ArgumentParser) -> None:
    group = commands.add_parser("containers", help="start, list, inspect, run commands in and stop containers")
    subcommands = group.add_subparsers(dest="containers_command", required=True, metavar="COMMAND")

    start = subcommands.add_parser(
        "start",
        parents=[options],
        help="create and start a container; prints its id",
        description="Create and start a container from IMAGE, or from --template. Words after the image "
        "(after the options, with --template) are the command, run without a shell.",
    )
    start.add_argument("image", nargs="?", help="image reference, such as busybox:1.36 (or use --template)")
    start.add_argument("cmd", nargs=argparse.REMAINDER, metavar="COMMAND", help="program and arguments")
    start.add_argument("--template", help="template to start from, such as python")
    start.add_argument("--name", help="container name (default: generated)")
    start.add_argument("--project", help="project id to group the container under")
    start.add_argument("-e", "--env", action="append", type=key_value, default=[], metavar="KEY=VALUE", help="environment variable (repeatable)")
    start.add_argument("-l", "--label", action="append", type=key_value, default=[], metavar="KEY=VALUE", help="label (repeatable)")
    start.add_argument(
        "-p", "--publish", action="append", type=port_mapping, default=[], metavar="[HOST:]PORT[/udp]",
        help="publish a container port on 127.0.0.1, on HOST or else any free port (repeatable)",
    )
    start.add_argument("-m", "--memory", help='memory limit in bytes or with a suffix, such as 512m')
    start.add_argument("--cpus", type=float, help="CPU limit, such as 1.5")
    start.add_argument("-w", "--workdir", help="working directory inside the container")
    start.add_argument("-u", "--user", help="user (name or uid[:gid]) the command runs as")
    start.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    start.add_argument("-v", "--volume", action="append", default=[], metavar="SOURCE:TARGET[:ro]", help="named volume (repeatable)")
    start.add_argument("--isolation", choices=("standard", "sandboxed"), help="sandboxed runs the container under gVisor")
    start.add_argument("--network", choices=("owner", "none"), help="none gives the container no network")
    start.add_argument("--ttl", help='remove the container this long after it starts: seconds, or such as "1h"')
    start.add_argument("--idle-timeout", help='stop the container after this long without activity: seconds, or such as "15m"')
    start.add_argument("--rm", action="store_true", help="remove the container once it has exited")
    start.add_argument("--idempotency-key", help="key that makes a retried start the same request")
    command(start, run_start)

    ls = subcommands.add_parser("ls", parents=[options], help="list containers, newest first")
    ls.add_argument("--project", help="only this project's containers")
    ls.add_argument("--status", choices=STATUSES, help="only this status (default: all but failed and removed)")
    ls.add_argument("--limit", type=int, default=50, help="containers per page, or per request with --all (default: %(default)s)")
    ls.add_argument("--offset", type=int, default=0, help="containers to skip (default: %(default)s)")
    ls.add_argument("-a", "--all", action="store_true", help="list every page")
    command(ls, run_ls)

    inspect = subcommands.add_parser("inspect", parents=[options], help="show a container's record")
    inspect.add_argument("container", type=identifier, help="container id or name")
    command(inspect, run_inspect)

    exec_ = subcommands.add_parser(
        "exec",
        parents=[options],
        help="run a command in a running container; exits with the command's exit code",
        description="Run COMMAND to completion and print its output. The exit status is the command's, "
        "or 124 when it ran past its timeout. With -i or -t the command runs in an interactive session "
        "instead: -i passes this terminal's input to it, -t gives it a terminal (this one goes into raw "
        "mode, so Ctrl-C reaches the command), and --timeout does not apply.",
    )
    exec_.add_argument("container", type=identifier, help="container id or name")
    exec_.add_argument("cmd", nargs=argparse.REMAINDER, metavar="COMMAND", help="program and arguments")
    exec_.add_argument("-e", "--env", action="append", type=key_value, default=[], metavar="KEY=VALUE", help="environment variable (repeatable)")
    exec_.add_argument("-w", "--workdir", help="working directory")
    exec_.add_argument("-u", "--user", help="user the command runs as")
    exec_.add_argument("--timeout", type=float, help="seconds the command may run (default: the server's exec.default_timeout)")
    exec_.add_argument("-i", "--interactive", action="store_true", help="pass stdin to the command")
    exec_.add_argument("-t", "--tty", action="store_true", help="give the command a terminal; use with -i for a shell")
    command(exec_, run_exec)

    cp = subcommands.add_parser(
        "cp",
        parents=[options],
        help="copy files between this machine and a container",
        description="Copy SOURCE to DESTINATION, one of them CONTAINER:PATH and the other a local path. A "
        "file or directory copied into an existing directory keeps its name; otherwise it takes the name "
        "of DESTINATION. A DESTINATION of - writes a tar archive of the container path to stdout.",
    )
    cp.add_argument("source", help="CONTAINER:PATH or a local path")
    cp.add_argument("destination", help="CONTAINER:PATH, a local path, or -")
    command(cp, run_cp)

    logs = subcommands.add_parser("logs", parents=[options], help="print a container's output")
    logs.add_argument("container", type=identifier, help="container id or name")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new output until the container exits")
    logs.add_argument("-n", "--tail", type=int, help="only this many lines from the end")
    logs.add_argument("--since", help="only output from this time on: RFC 3339, or Unix seconds")
    logs.add_argument("--until", help="only output before this time: RFC 3339, or Unix seconds")
    logs.add_argument("--timestamps", action="store_true", help="start each line with its time")
    command(logs, run_logs)

    for name, handler, summary in (
        ("pause", run_pause, "freeze a running container's processes"),
        ("resume", run_resume, "let a paused container's processes run again"),
    ):
        parser = subcommands.add_parser(name, parents=[options], help=summary)
        parser.add_argument("container", type=identifier, help="container id or name")
        command(parser, handler)

    for name, handler, summary in (
        ("stop", run_stop, "stop a container: SIGTERM, then SIGKILL after the grace period"),
        ("restart", run_restart, "restart a container"),
    ):
        parser = subcommands.add_parser(name, parents=[options], help=summary)
        parser.add_argument("container", type=identifier, help="container id or name")
        parser.add_argument("--timeout", type=float, help="seconds between SIGTERM and SIGKILL (default: the server's)")
        command(parser, handler)

    rm = subcommands.add_parser("rm", parents=[options], help="remove a container")
    rm.add_argument("container", type=identifier, help="container id or name")
    rm.add_argument("-f", "--force", action="store_true", help="remove it even while it runs")
    command(rm, run_rm)


def key_value(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def port_mapping(text: str) -> tuple[str, int | None]:
    """Read docker's [HOST:]PORT[/PROTOCOL] as (container port, host port or None)."""
    host, _, container = text.rpartition(":")
    number, _, protocol = container.partition("/")
    if not number.isdigit() or (host and not host.isdigit()) or protocol not in ("", "tcp", "udp"):
        raise argparse.ArgumentTypeError(f"{text!r} is not [HOST:]PORT[/udp], such as 8080:80 or 3000")
    return container, int(host) if host else None


def run_start(context: Context) -> None:
    args = context.args
    image, cmd = args.image, args.cmd
    if args.template and image:
        # With a template, the first word after the options is already the command.
        image, cmd = None, [image, *cmd]
    if not image and not args.template:
        raise UsageError("name an image, such as `corebase containers start busybox:1.36`, or a template with --template")
    with context.out.waiting("Starting the container (pulling its image if needed)"):
        record = context.client.containers.start(
            image,
            template=args.template,
            name=args.name,
            project_id=args.project,
            command=_command(cmd) or None,
            env=dict(args.env) or None,
            labels=dict(args.label) or None,
            ports=dict(args.publish) or None,
            memory=args.memory,
            cpus=args.cpus,
            workdir=args.workdir,
            user=args.user,
            tty=args.tty or None,
            volumes=args.volume or None,
            isolation=args.isolation,
            network=args.network,
            ttl=args.ttl,
            idle_timeout=args.idle_timeout,
            auto_remove=args.rm or None,
            idempotency_key=args.idempotency_key,
        )

    def human() -> None:
        context.out.line(record.id)
        for name, value in (record.credentials or {}).items():
            context.out.note(f"{name}={value}  (shown once; store it now)")

    context.out.result(record, human)


def run_ls(context: Context) -> None:
    args = context.args
    containers = context.client.containers
    filters = {"project_id": args.project, "status": args.status, "limit": args.limit, "offset": args.offset}
    if args.all:
        items = list(containers.iterate(**filters))
        total = args.offset + len(items)
        response: Any = {"items": items, "total": total, "limit": len(items), "offset": args.offset}
    else:
        response = containers.list(**filters)
        items, total = response.items, response.total

    def human() -> None:
        context.out.table(items, CONTAINER_COLUMNS, empty="no containers")
        if args.offset + len(items) < total:
            context.out.note(f"{len(items)} of {total} shown; --all lists every page")

    context.out.result(response, human)


def run_inspect(context: Context) -> None:
    record = context.client.containers.get(context.args.container)
    context.out.result(record, lambda: context.out.fields(record))


def run_exec(context: Context) -> int:
    args = context.args
    words = _command(args.cmd)
    if not words:
        raise UsageError("no command given; put the program and its arguments after the container")
    if args.interactive or args.tty:
        exit_code = run_session(
            context.client,
            args.container,
            words,
            interactive=args.interactive,
            terminal=args.tty,
            env=dict(args.env) or None,
            workdir=args.workdir,
            user=args.user,
        )
        # A session whose exit code the engine did not report counts as failed.
        return 1 if exit_code is None else exit_code
    result = context.client.containers.exec(
        args.container, words, env=dict(args.env) or None, workdir=args.workdir, user=args.user, timeout=args.timeout
    )
    if context.out.json_mode:
        context.out.json(result)
    else:
        sys.stdout.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.write(result.stderr)
        if result.truncated:
            context.out.note("corebase: the output was longer than the server's exec.max_output and was cut")
    if result.timed_out or result.exit_code is None:
        context.out.note(f"corebase: the command ran past its timeout after {result.duration_ms / 1000:.1f} s")
        return ExitCode.EXEC_TIMED_OUT
    return result.exit_code


def run_logs(context: Context) -> None:
    args = context.args
    chunks = context.client.containers.logs(
        args.container, follow=args.follow, tail=args.tail, since=args.since, until=args.until, timestamps=args.timestamps
    )
    encoder = msgspec.json.Encoder()
    for chunk in chunks:
        if context.out.json_mode:
            # One JSON object per line, as the API's format=ndjson sends them.
            sys.stdout.write(encoder.encode(chunk).decode() + "\n")
            sys.stdout.flush()
            continue
        stream = sys.stderr if chunk.stream == "stderr" else sys.stdout
        stream.write(chunk.text)
        stream.flush()


def run_stop(context: Context) -> None:
    with context.out.waiting("Stopping the container"):
        record = context.client.containers.stop(context.args.container, timeout=context.args.timeout)
    context.out.result(record, lambda: context.out.line(record.id))


def run_restart(context: Context) -> None:
    with context.out.waiting("Restarting the container"):
        record = context.client.containers.restart(context.args.container, timeout=context.args.timeout)
    context.out.result(record, lambda: context.out.line(record.id))


def run_pause(context: Context) -> None:
    record = context.client.containers.pause(context.args.container)
    context.out.result(record, lambda: context.out.line(record.id))


def run_resume(context: Context) -> None:
    record = context.client.containers.resume(context.args.container)
    context.out.result(record, lambda: context.out.line(record.id))


def run_rm(context: Context) -> None:
    try:
        record = context.client.containers.remove(context.args.container, force=context.args.force)
    except Conflict as exc:
        if exc.slug == "container-running":
            # The server's hint names the API's force field; on the command line it is a flag.
            exc.detail = f"container {context.args.container!r} is running; stop it first, or remove it with -f (--force)"
        raise
    context.out.result(record, lambda: context.out.line(record.id))


def _command(words: list[str]) -> list[str]:
    # argparse.REMAINDER keeps a leading "--" that separates the command from the options.
    return words[1:] if words[:1] == ["--"] else words


def _status(record) -> str:
    if record.status == "exited" and record.exit_code is not None:
        return f"exited ({record.exit_code})"
    return record.status


def _ports(record) -> str:
    return ", ".join(
        f"{port.host_ip}:{port.host_port}->{port.container_port}/{port.protocol}" if port.host_port else f"{port.container_port}/{port.protocol}"
        for port in record.ports
    )
