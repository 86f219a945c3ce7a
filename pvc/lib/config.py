"""Configuration: the manual's ``pvc-api.yaml`` keys plus ours, read into a frozen Settings value.

The file is found as the manual says (``PVC_CONFIG_FILE``), or given with ``pvc --config FILE``;
else ``/etc/pvc/pvc-api.yaml`` is read when it exists; else the embedded defaults apply (no file at
all is a valid single-host set-up). Every mistake becomes one line naming the key path and what is
wrong; all of them are reported together as one :class:`ConfigError`.

``KEYS`` below is the single declaration of the file's keys: it drives validation, and a test
checks that ``pvc-api.example.yaml`` documents every one of them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping

from pvc.lib import config_values as check
from pvc.lib.config_values import Bmc, Token
from pvc.lib.errors import ConfigError

SYSTEM_CONFIG = "/etc/pvc/pvc-api.yaml"
DEFAULT_PORT = 7370


@dataclass(frozen=True)
class Settings:
    """Everything a pvc process needs to know, as one immutable value."""

    debug: bool = False
    coordinators: tuple[str, ...] = ()
    listen_address: str = "127.0.0.1"
    listen_port: int = DEFAULT_PORT
    auth_enabled: bool = False
    secret_key: str | None = field(default=None, repr=False)
    tokens: tuple[Token, ...] = ()
    session_lifetime: int = 12 * 3600
    ssl_enabled: bool = False
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None
    store_path: str | None = None
    zk_chroot: str | None = None
    store_timeout: float = 5.0
    wait_timeout: float = 600.0
    target_selector: str = "mem"
    # -- limits of `pvc serve` against slow or hostile clients --
    threads: int = 32
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    per_client_connections: int = 8
    listen_backlog: int = 128
    regex_timeout: float = 0.1
    auth_failures_per_minute: int = 10
    command_waiters: int = 16
    # -- the node agent --
    node_name: str | None = None
    libvirt_uri: str = "qemu:///system"
    node_coordinator: bool | None = None
    keepalive_interval: float = 5.0
    fence_intervals: int = 6
    successful_fence: str = "migrate"
    failed_fence: str = "none"
    bmcs: tuple["Bmc", ...] = ()
    migration_target_uri: str = "qemu+tcp://{node}/system"
    migration_data_uri: str | None = None
    migration_unsafe: bool = False
    migration_timeout: float = 300.0
    shutdown_timeout: float = 90.0
    flush_parallel: int = 4
    # -- commands to node agents, and Ceph --
    command_timeout: float = 60.0
    osd_timeout: float = 600.0
    command_workers: int = 8
    ceph_config: str | None = None
    ceph_figures_interval: float = 10.0
    source: str = field(default="built-in defaults", compare=False)

    @property
    def engine(self) -> str:
        """``zookeeper`` when coordinators are configured, else ``embedded``."""
        return "zookeeper" if self.coordinators else "embedded"

    def dead_after(self) -> float:
        """Seconds without a keepalive after which a node counts as dead (interval × fence_intervals)."""
        return self.keepalive_interval * self.fence_intervals

    def bmc_of(self, node: str) -> "Bmc | None":
        return next((b for b in self.bmcs if b.node == node), None)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def default_store_path(env: Mapping[str, str]) -> str:
    """The embedded store's file in the user's data directory (XDG), e.g. ~/.local/share/pvc."""
    base = env.get("XDG_DATA_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "pvc", "pvc.sqlite")


@dataclass(frozen=True)
class Key:
    """One configuration key: where it sits in the file and which Settings field it fills."""

    path: str
    field: str
    check: Callable[[Any], Any]
    required: bool = False
    help: str = ""


KEYS: tuple[Key, ...] = (
    Key("pvc.debug", "debug", check.boolean, True, "Pretty JSON and debug logging; never an interactive debugger."),
    Key("pvc.coordinators", "coordinators", check.coordinators, True,
        "ZooKeeper hosts (host or host:port); an empty list selects the embedded store."),
    Key("pvc.api.listen_address", "listen_address", check.address, True, "Address `pvc serve` listens on."),
    Key("pvc.api.listen_port", "listen_port", check.port, False, "Port `pvc serve` listens on (default 7370)."),
    Key("pvc.api.authentication.enabled", "auth_enabled", check.boolean, True, "Require a token on protected routes."),
    Key("pvc.api.authentication.secret_key", "secret_key", check.opt_str, False, "Key that signs session cookies."),
    Key("pvc.api.authentication.tokens", "tokens", check.tokens, False, "List of {description, token}."),
    Key("pvc.api.authentication.session_lifetime", "session_lifetime", check.positive_int, False,
        "Seconds a login session stays valid (default 43200)."),
    Key("pvc.api.ssl.enabled", "ssl_enabled", check.boolean, True, "Serve HTTPS."),
    Key("pvc.api.ssl.cert_file", "ssl_cert_file", check.opt_str, False, "PEM certificate (chain) file."),
    Key("pvc.api.ssl.key_file", "ssl_key_file", check.opt_str, False, "PEM private key file."),
    Key("pvc.api.limits.threads", "threads", check.count, False,
        "Worker threads of `pvc serve`: requests answered at once (default 32)."),
    Key("pvc.api.limits.max_header_bytes", "max_header_bytes", check.count, False,
        "Largest request line plus headers, in bytes; larger is refused with 431 (default 65536)."),
    Key("pvc.api.limits.header_timeout", "header_timeout", check.positive, False,
        "Seconds a client has to send its request line and headers, in all (default 10)."),
    Key("pvc.api.limits.per_client_connections", "per_client_connections", check.count, False,
        "Connections one client address may hold open at once (default 8)."),
    Key("pvc.api.limits.listen_backlog", "listen_backlog", check.count, False,
        "Connections the kernel queues before `pvc serve` accepts them (default 128)."),
    Key("pvc.api.limits.regex_timeout", "regex_timeout", check.positive, False,
        "Seconds a `limit` regex may run before the request is refused with 400 (default 0.1)."),
    Key("pvc.api.limits.command_waiters", "command_waiters", check.count, False,
        "Requests that may wait at once for a node agent to carry out a command (storage); more are "
        "answered 503 at once, so that waiting requests never hold every worker (default 16)."),
    Key("pvc.api.authentication.failures_per_minute", "auth_failures_per_minute", check.count, False,
        "Failed authentications one client address may make per minute before it gets 429 (default 10)."),
    Key("pvc.store.path", "store_path", check.opt_str, False, "Embedded store file (default in the data directory)."),
    Key("pvc.store.chroot", "zk_chroot", check.chroot, False, "ZooKeeper path under which the cluster lives."),
    Key("pvc.store.timeout", "store_timeout", check.positive, False, "Seconds to wait for the store (default 5)."),
    Key("pvc.timeouts.wait", "wait_timeout", check.positive, False, "Deadline of `--wait` (default 600)."),
    Key("pvc.system.migration.target_selector", "target_selector", check.selector, False,
        "How a node is chosen for a VM when none is given: mem, vcpus, load or vms (default mem)."),
    Key("pvc.system.migration.target_uri", "migration_target_uri", check.node_template, False,
        "libvirt URI of a target node's hypervisor for live migration; {node} is its name."),
    Key("pvc.system.migration.data_uri", "migration_data_uri", check.opt_node_template, False,
        "URI the migration's data goes to ({node} is the target); default: libvirt's choice."),
    Key("pvc.system.migration.unsafe", "migration_unsafe", check.boolean, False,
        "Live-migrate even disks libvirt considers unsafe (not on shared storage)."),
    Key("pvc.system.migration.timeout", "migration_timeout", check.positive, False,
        "Seconds a migration may take before it is given up (default 300)."),
    Key("pvc.system.intervals.keepalive_interval", "keepalive_interval", check.positive, False,
        "Seconds between a node agent's keepalives (default 5)."),
    Key("pvc.system.intervals.shutdown_timeout", "shutdown_timeout", check.positive, False,
        "Seconds a VM gets to shut down gracefully before it is forced off (default 90)."),
    Key("pvc.system.intervals.flush_parallel", "flush_parallel", check.count, False,
        "How many VMs a flush or ready moves at a time (default 4)."),
    Key("pvc.system.commands.timeout", "command_timeout", check.positive, False,
        "Seconds a node agent has to carry out a command (a Ceph pool, volume or snapshot change) "
        "before the request fails; a command not started by then is never run (default 60)."),
    Key("pvc.system.commands.osd_timeout", "osd_timeout", check.positive, False,
        "The same for adding and removing an OSD, which waits for its data to move (default 600)."),
    Key("pvc.system.commands.workers", "command_workers", check.count, False,
        "Commands one node agent carries out at once; more wait their turn (default 8)."),
    Key("pvc.ceph.config", "ceph_config", check.opt_str, False,
        "The ceph.conf the node agent's ceph, rbd and rados commands use (default: Ceph's own, "
        "/etc/ceph/ceph.conf); relative to this file."),
    Key("pvc.ceph.figures_interval", "ceph_figures_interval", check.positive, False,
        "Seconds between the node agent's Ceph figures (status, df, pool and OSD stats; default 10)."),
    Key("pvc.system.fencing.intervals.fence_intervals", "fence_intervals", check.count, False,
        "Keepalive intervals without a keepalive after which a node is dead (default 6)."),
    Key("pvc.system.fencing.actions.successful_fence", "successful_fence", check.fence_action, False,
        "What happens to a dead node's VMs once its fence is confirmed: migrate (default) or none."),
    Key("pvc.system.fencing.actions.failed_fence", "failed_fence", check.fence_action, False,
        "What happens to a dead node's VMs when it could not be fenced: none (default) or migrate."),
    Key("pvc.system.fencing.ipmi", "bmcs", check.bmcs, False,
        "Each node's BMC: node name to {host, user, password_file, port}; read by the coordinators."),
    Key("pvc.node.name", "node_name", check.node_name, False, "This node's name (default: the short host name)."),
    Key("pvc.node.libvirt_uri", "libvirt_uri", check.uri, False, "This node's hypervisor (default qemu:///system)."),
    Key("pvc.node.coordinator", "node_coordinator", check.opt_bool, False,
        "Whether this node is a coordinator (default: its name is one of the coordinators' hosts)."),
)

_SECTIONS = {".".join(k.path.split(".")[:i]) for k in KEYS for i in range(1, k.path.count(".") + 1)}


def _walk(data: Any, prefix: str, problems: list[str], found: dict[str, Any], broken: list[str]) -> None:
    """Flatten the mapping into dotted paths, reporting unknown keys and non-mappings (whose
    paths go to ``broken``: their missing keys are not reported again, one line per mistake)."""
    if not isinstance(data, dict):
        problems.append(f"{prefix}: must be a mapping")
        broken.append(prefix)
        return
    known = {k.path for k in KEYS}
    for name, value in data.items():
        path = f"{prefix}.{name}"
        if path in known:
            found[path] = value
        elif path in _SECTIONS:
            _walk(value, path, problems, found, broken)
        else:
            problems.append(f"{path}: unknown key")


def settings_from_mapping(data: Any, source: str, env: Mapping[str, str]) -> Settings:
    """Validate a parsed configuration file and build Settings, or raise ConfigError."""
    problems: list[str] = []
    found: dict[str, Any] = {}
    broken: list[str] = []
    if not isinstance(data, dict) or set(data) != {"pvc"}:
        extra = sorted(map(str, set(data) - {"pvc"})) if isinstance(data, dict) else []
        if extra:
            problems.extend(f"{name}: unknown key" for name in extra)
        if not isinstance(data, dict) or "pvc" not in data:
            raise ConfigError(problems + [f"{source}: must be a mapping with a top-level 'pvc' key"])
    _walk(data["pvc"], "pvc", problems, found, broken)
    values: dict[str, Any] = {}
    failed: set[str] = set()
    for key in KEYS:
        if key.path not in found:
            if key.required and not any(key.path.startswith(b + ".") for b in broken):
                problems.append(f"{key.path}: required key is missing")
            continue
        try:
            values[key.field] = key.check(found[key.path])
        except ValueError as e:
            problems.append(f"{key.path}: {e}")
            failed.add(key.field)
    problems.extend(_cross_checks(values, failed))
    if problems:
        raise ConfigError(problems)
    uri = values.get("libvirt_uri")
    if uri and uri.startswith("test:") and not uri.startswith("test://"):
        # pvc's shorthand for libvirt's test driver on a node file: test:PATH, relative to this file.
        values["libvirt_uri"] = "test://" + os.path.join(os.path.dirname(os.path.abspath(source)),
                                                         os.path.expanduser(uri[len("test:"):]))
    if values.get("ceph_config"):  # relative to the configuration file, like the store's path
        values["ceph_config"] = os.path.join(os.path.dirname(os.path.abspath(source)),
                                             os.path.expanduser(values["ceph_config"]))
    if not values.get("store_path"):
        values["store_path"] = default_store_path(env)
    else:  # a relative path is relative to the configuration file, not to where pvc runs
        values["store_path"] = os.path.join(os.path.dirname(os.path.abspath(source)),
                                            os.path.expanduser(values["store_path"]))
    return Settings(source=source, **values)


def _cross_checks(values: dict[str, Any], failed: Collection[str] = ()) -> list[str]:
    """Rules that involve more than one key; a key already reported (``failed``) is not again."""
    problems = []
    if values.get("auth_enabled"):
        tokens = values.get("tokens") or ()
        if not tokens and "tokens" not in failed:
            problems.append("pvc.api.authentication.tokens: at least one token is required when authentication is enabled")
        for i, token in enumerate(tokens):
            if not token.token.strip():
                problems.append(f"pvc.api.authentication.tokens: entry {i + 1} has an empty token")
        if values.get("secret_key") == "":
            problems.append("pvc.api.authentication.secret_key: must not be empty when authentication is enabled")
    if values.get("ssl_enabled"):
        for name, path in (("cert_file", values.get("ssl_cert_file")), ("key_file", values.get("ssl_key_file"))):
            if not path and f"ssl_{name}" not in failed:
                problems.append(f"pvc.api.ssl.{name}: required when pvc.api.ssl.enabled is true")
    return problems


def find_config_file(explicit: str | None, env: Mapping[str, str]) -> str | None:
    """The file to read: --config, else PVC_CONFIG_FILE, else the system file if it exists."""
    if explicit:
        return explicit
    if env.get("PVC_CONFIG_FILE"):
        return env["PVC_CONFIG_FILE"]
    return SYSTEM_CONFIG if os.path.exists(SYSTEM_CONFIG) else None


def load_settings(explicit: str | None, env: Mapping[str, str]) -> Settings:
    """Find, read and validate the configuration; the built-in defaults when there is no file.

    ``env`` is the environment to consult (the caller passes os.environ), so that the library
    never reads the process environment by itself."""
    path = find_config_file(explicit, env)
    if path is None:
        return Settings(store_path=default_store_path(env))
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the configuration file: {e.strerror or e}"])
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: cannot read the configuration file: not UTF-8 text "
                           f"(byte 0x{e.object[e.start]:02x} at offset {e.start})"])
    import yaml  # only when there is a file: keeps `pvc --help` light

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        if mark is None and isinstance(getattr(e, "position", None), int):  # a ReaderError: bad character
            before = text[: e.position]
            where = f" at line {before.count(chr(10)) + 1}, column {len(before.rsplit(chr(10), 1)[-1]) + 1}"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError([f"{path}: not valid YAML{where}: {problem}"])
    return settings_from_mapping(data, path, env)
