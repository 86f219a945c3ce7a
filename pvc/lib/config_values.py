"""The values of the configuration file: one checker per kind of value, and the small types the
checked values become (tokens, BMCs). Each checker returns the converted value or raises
ValueError saying what is wrong; :mod:`pvc.lib.config` names the key in front of it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from pvc.lib.errors import InvalidArgument
from pvc.lib.schema import validate_name

@dataclass(frozen=True)
class Token:
    """One API token; the description is for the administrator only."""

    token: str
    description: str = ""

    def __repr__(self) -> str:  # never show a token in a log or a traceback
        return f"Token(description={self.description!r})"


@dataclass(frozen=True)
class Bmc:
    """How a coordinator reaches a node's BMC for fencing. The password stays in its file: it
    is read only when a fence runs, and handed to ipmitool in its environment (``-E``)."""

    node: str
    host: str
    user: str
    password_file: str
    port: int = 623


# --- value checkers: each returns the converted value or raises ValueError(what is wrong) --------


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("must be true or false")


def port(value: Any) -> int:
    digits = isinstance(value, str) and value.isascii() and value.isdigit()
    if isinstance(value, bool) or not (isinstance(value, int) or digits):
        raise ValueError("must be an integer from 1 to 65535")
    number = int(value)
    if not 1 <= number <= 65535:
        raise ValueError("must be an integer from 1 to 65535")
    return number


_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


def check_host(text: str) -> str:
    """A host name or IP address (IPv6 in brackets when a port follows)."""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ipaddress.ip_address(bare)
        return text
    except ValueError:
        pass
    if not _HOST.match(bare) or len(bare) > 253:
        raise ValueError(f"{text!r} is not a host name or IP address")
    return text


def address(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be an IP address or host name, e.g. 127.0.0.1 or 0.0.0.0")
    check_host(value)
    return value


def split_host_port(item: str) -> tuple[str, str | None]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address → (host, port or None)."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(item)
        return host, rest[1:] if rest else None
    if item.count(":") == 1:
        host, port = item.split(":")
        return host, port
    return item, None


def coordinators(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("must be a list of host names (host or host:port); empty for the embedded store")
    for i, item in enumerate(value):
        try:
            if not isinstance(item, str):
                raise ValueError(item)
            host, given = split_host_port(item)
            check_host(host)
            if given is not None:
                port(given)
        except ValueError:
            raise ValueError(f"entry {i + 1} ({item!r}) must be host or host:port with a port from 1 to 65535")
    return tuple(value)


def opt_str(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError("must be a number of seconds greater than 0")
    return float(value)


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("must be a whole number of seconds greater than 0")
    return value


def chroot(value: Any) -> str | None:
    value = opt_str(value)
    if value in (None, "", "/"):
        return None
    if not value.startswith("/") or value.endswith("/") or "//" in value:
        raise ValueError("must be an absolute ZooKeeper path such as /pvc (no trailing '/')")
    for part in value[1:].split("/"):
        try:
            validate_name("path component", part)
        except InvalidArgument as e:
            raise ValueError(f"must be an absolute ZooKeeper path of valid names: {e.message.rstrip('.')}") from None
    return value


def tokens(value: Any) -> tuple[Token, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("must be a list of {description, token} entries")
    found = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ValueError(f"entry {i + 1} must be a mapping with a 'token' key")
        unknown = set(item) - {"description", "token"}
        if unknown:
            raise ValueError(f"entry {i + 1} has unknown key {sorted(unknown)[0]!r}")
        if "token" not in item:
            raise ValueError(f"entry {i + 1} has no 'token'")
        if not isinstance(item["token"], str):
            raise ValueError(f"entry {i + 1}: token must be a string")
        found.append(Token(token=item["token"], description=str(item.get("description") or "")))
    return tuple(found)


#: The node selectors of define and migrate (the manual's list).
SELECTORS = ("mem", "vcpus", "load", "vms")


FENCE_ACTIONS = ("migrate", "none")


def fence_action(value: Any) -> str:
    if value not in FENCE_ACTIONS:
        raise ValueError(f"must be one of {', '.join(FENCE_ACTIONS)}")
    return value


def node_name(value: Any) -> str | None:
    value = opt_str(value)
    if value in (None, ""):
        return None
    try:
        return validate_name("node", value)
    except InvalidArgument as e:
        raise ValueError(e.message.rstrip(".")) from None


def opt_bool(value: Any) -> bool | None:
    return None if value is None else boolean(value)


def count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("must be a whole number greater than 0")
    return value


def uri(value: Any) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError("must be a non-empty URI without spaces")
    return value


def node_template(value: Any) -> str:
    value = uri(value)
    try:
        value.format(node="hv1")
    except (KeyError, IndexError, ValueError):
        raise ValueError("must be a URI that may contain {node} (the target node's name) and no other {...}") from None
    return value


def opt_node_template(value: Any) -> str | None:
    return None if value in (None, "") else node_template(value)


def bmcs(value: Any) -> tuple[Bmc, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of node name to {host, user, password_file[, port]}")
    found = []
    for node, item in value.items():
        try:
            validate_name("node", node)
        except InvalidArgument as e:
            raise ValueError(e.message.rstrip(".")) from None
        if not isinstance(item, dict):
            raise ValueError(f"{node}: must be a mapping with host, user and password_file")
        unknown = set(item) - {"host", "user", "password_file", "port"}
        if unknown:
            raise ValueError(f"{node}: unknown key {sorted(unknown)[0]!r} (the password goes in password_file, "
                             "never in this file)")
        for k in ("host", "user", "password_file"):
            if not isinstance(item.get(k), str) or not item[k]:
                raise ValueError(f"{node}: {k} must be a non-empty string")
        try:
            check_host(item["host"])
        except ValueError as e:
            raise ValueError(f"{node}: host {e}") from None
        found.append(Bmc(node=node, host=item["host"], user=item["user"], password_file=item["password_file"],
                         port=port(item.get("port", 623))))
    return tuple(found)


def selector(value: Any) -> str:
    if value not in SELECTORS:
        raise ValueError(f"must be one of {', '.join(SELECTORS)}")
    return value
