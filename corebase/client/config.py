"""Client configuration: the server URL and API key, and the profile file that `corebase login` writes.

The URL and the key each come from the first of these sources that has them:

1. the `url` and `api_key` arguments;
2. the profile named by the `profile` argument (the CLI's `--profile`), which must exist;
3. the COREBASE_URL and COREBASE_API_KEY environment variables;
4. the profile named by COREBASE_PROFILE, else the profile `default`, if the file has it.

A profile's key is only ever sent to that profile's URL: when the URL came from an argument or
the environment and differs from the profile's, the profile's key is not used. Without any URL
the client uses http://127.0.0.1:8420, where `corebase serve` listens by default.

The profile file is `$XDG_CONFIG_HOME/corebase/config.toml` (`~/.config/corebase/config.toml`
when XDG_CONFIG_HOME is unset), readable by its owner only:

    [profiles.default]
    url = "http://127.0.0.1:8420"
    key = "cbk_..."
    user = "admin"
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

import msgspec

from corebase.client.errors import ConfigurationError

DEFAULT_URL = "http://127.0.0.1:8420"
DEFAULT_PROFILE = "default"
# TOML bare keys, so a name needs no quoting in the file.
PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_FILE_HEADER = "# CoreBase CLI profiles, written by `corebase login`. It holds API keys: keep it private.\n"


class Profile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: str
    key: str
    # The user the key belongs to, as the server reported it at login.
    user: str | None = None


class _ProfileFile(msgspec.Struct, kw_only=True):
    profiles: dict[str, Profile] = {}


class ClientConfig(msgspec.Struct, kw_only=True):
    """The resolved settings of a client."""

    url: str
    api_key: str
    # The profile that supplied the URL or the key, or None when both came from arguments or the environment.
    profile: str | None = None


def profile_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "corebase" / "config.toml"


def check_profile_name(name: str) -> str:
    if not PROFILE_NAME.match(name):
        raise ConfigurationError(
            f"invalid profile name {name!r}; use 1 to 64 letters, digits, '-' or '_'"
        )
    return name


def load_profiles(path: Path | None = None) -> dict[str, Profile]:
    """Read every profile from the file; no file means no profiles."""
    path = path or profile_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return msgspec.convert(data, _ProfileFile).profiles
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ConfigurationError(
            f"cannot read the profile file {str(path)!r}: {exc}; fix it, or remove it and run `corebase login` again"
        ) from None


def save_profile(name: str, profile: Profile, path: Path | None = None) -> Path:
    """Add or replace one profile, keeping the others; the file is replaced atomically with mode 0600."""
    path = path or profile_path()
    profiles = load_profiles(path)
    profiles[check_profile_name(name)] = profile
    _write(path, profiles)
    return path


def remove_profile(name: str, path: Path | None = None) -> bool:
    """Remove one profile; return False when the file has no such profile."""
    path = path or profile_path()
    profiles = load_profiles(path)
    if profiles.pop(name, None) is None:
        return False
    _write(path, profiles)
    return True


def _write(path: Path, profiles: Mapping[str, Profile]) -> None:
    lines = [_FILE_HEADER]
    for name, profile in sorted(profiles.items()):
        lines.append(f"\n[profiles.{name}]\n")
        for field in profile.__struct_fields__:
            value = getattr(profile, field)
            if value is not None:
                lines.append(f"{field} = {_toml_string(field, value)}\n")

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _toml_string(field: str, value: str) -> str:
    # JSON's string escapes are a subset of TOML's basic-string escapes, except that TOML also
    # forbids a raw DEL; control characters have no place in a URL, a key or a user name anyway.
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise ConfigurationError(f"the profile's {field} contains a control character; check the value")
    return json.dumps(value, ensure_ascii=False)


def resolve(
    url: str | None = None,
    api_key: str | None = None,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> ClientConfig:
    """Find the URL and API key in the order the module docstring gives."""
    environ = os.environ if environ is None else environ
    path = path or profile_path(environ)

    if profile is not None:
        name = check_profile_name(profile)
        stored = load_profiles(path).get(name)
        if stored is None:
            raise ConfigurationError(
                f"no profile {profile!r} in {str(path)!r}; create it with `corebase login --profile {profile}`"
            )
    else:
        url = url or environ.get("COREBASE_URL") or None
        api_key = api_key or environ.get("COREBASE_API_KEY") or None
        name = environ.get("COREBASE_PROFILE") or DEFAULT_PROFILE
        stored = None
        if url is None or api_key is None:
            stored = load_profiles(path).get(name)
            if stored is None and environ.get("COREBASE_PROFILE"):
                raise ConfigurationError(
                    f"COREBASE_PROFILE names the profile {name!r}, which {str(path)!r} does not have; "
                    f"create it with `corebase login --profile {name}`"
                )

    used_profile = None
    if stored is not None and (url is None or _clean_url(url) == _clean_url(stored.url)):
        url = url or stored.url
        api_key = api_key or stored.key
        used_profile = name
    if api_key is None:
        elsewhere = (
            f"; the stored profile {name!r} is for {stored.url}, so its key is not sent to {url}"
            if stored is not None and url is not None
            else ""
        )
        raise ConfigurationError(
            "no API key: run `corebase login`, set COREBASE_API_KEY, or pass api_key to the client "
            f"(--key on the command line){elsewhere}"
        )
    return ClientConfig(url=_clean_url(url or DEFAULT_URL), api_key=api_key, profile=used_profile)


def _clean_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise ConfigurationError(f"invalid server URL {url!r}; use http://host:port or https://host")
    return url
