"""`corebase login` and `corebase logout`: store and forget a server URL with its API key."""

from __future__ import annotations

import argparse
import getpass
import sys

from corebase.cli.context import Context, UsageError, command
from corebase.cli.output import ExitCode
from corebase.client import Client
from corebase.client.config import (
    DEFAULT_PROFILE,
    DEFAULT_URL,
    Profile,
    check_profile_name,
    load_profiles,
    profile_path,
    remove_profile,
    save_profile,
)
from corebase.client.errors import Forbidden


def register(commands: argparse._SubParsersAction) -> None:
    login = commands.add_parser(
        "login",
        help="check an API key against a server and store both as a profile",
        description="Check the API key against the server, then store the URL and key as a profile in "
        f"{profile_path()} (mode 0600). The key comes from --key, else from stdin when it is not a "
        "terminal, else from a prompt that does not echo.",
    )
    login.add_argument("url", nargs="?", help=f"server URL (default: the profile's, else {DEFAULT_URL})")
    login.add_argument("--profile", default=DEFAULT_PROFILE, help="name to store the login under (default: %(default)s)")
    login.add_argument("--key", help="API key; visible to other users in the process list, so prefer stdin or the prompt")
    login.add_argument("--json", action="store_true", help="print the stored profile, without the key, as JSON")
    command(login, run_login)

    logout = commands.add_parser(
        "logout", help="remove a stored profile; the key itself stays valid until revoked (`corebase keys revoke`)"
    )
    logout.add_argument("--profile", default=DEFAULT_PROFILE, help="profile to remove (default: %(default)s)")
    logout.add_argument("--json", action="store_true", help="print the result as JSON")
    command(logout, run_logout)


def run_login(context: Context) -> int:
    args = context.args
    name = check_profile_name(args.profile)
    stored = load_profiles().get(name)
    url = args.url or (stored.url if stored else DEFAULT_URL)
    key = args.key or _read_key(url)
    if not key:
        raise UsageError("no API key given; pass --key, pipe the key on stdin, or type it at the prompt")

    with Client(url, key) as client, context.out.waiting(f"Checking the key at {client.config.url}"):
        try:
            user = client.quotas.me().user
        except Forbidden:
            # The key authenticated, but its scopes leave out reading (`write` alone, say).
            user = None
        url = client.config.url

    path = save_profile(name, Profile(url=url, key=key, user=user))
    summary = {"profile": name, "url": url, "user": user, "path": str(path)}
    context.out.result(summary, lambda: context.out.note(_logged_in(summary)))
    return ExitCode.OK


def _logged_in(summary: dict) -> str:
    as_user = f" as {summary['user']}" if summary["user"] else ""
    return f"Logged in to {summary['url']}{as_user}; profile {summary['profile']!r} stored in {summary['path']}"


def _read_key(url: str) -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().strip()
    return getpass.getpass(f"API key for {url}: ").strip()


def run_logout(context: Context) -> int:
    name = context.args.profile
    removed = remove_profile(check_profile_name(name))
    summary = {"profile": name, "removed": removed}
    if removed:
        context.out.result(summary, lambda: context.out.note(f"Removed profile {name!r} from {profile_path()}"))
        return ExitCode.OK
    context.out.result(summary, lambda: context.out.note(f"corebase: no profile {name!r} in {profile_path()}"))
    return ExitCode.NOT_FOUND
