"""`pvc network lease hook`: dnsmasq's ``--dhcp-script``, recording DHCP leases in the cluster.

dnsmasq runs its script with ``add|old|del MAC IP [HOSTNAME]`` for each lease event and with
``init`` at start-up, when it reads its leases back from the script's output (it is started with
``--leasefile-ro``). The lease's details come in the environment: ``DNSMASQ_LEASE_EXPIRES`` (or
``DNSMASQ_LEASE_LENGTH``), ``DNSMASQ_CLIENT_ID`` and the interface, the network's bridge
``vmbr<vni>`` (``DNSMASQ_BRIDGE_INTERFACE``, which the original's daemon set for its dnsmasq, or
dnsmasq's own ``DNSMASQ_INTERFACE``). This command reads them and calls
:mod:`pvc.lib.dhcp_leases`.

dnsmasq (its man page, 2.90) passes HOSTNAME with every event of a lease that has one; when the
name was removed it sends ``old`` without it (the former name in ``DNSMASQ_OLD_HOSTNAME``), so a
lease event without HOSTNAME records none. The ``old`` events at start-up, after ``init``, carry
``DNSMASQ_DATA_MISSING``: they may lack what the lease file did not hold, so the recorded client
ID stays when ``DNSMASQ_CLIENT_ID`` is not given then.
"""

from __future__ import annotations

import os
import time

import click

from pvc.cli.context import CliContext
from pvc.cli.errors import CommandFailed
from pvc.lib.core import Cluster
from pvc.lib.errors import InvalidArgument, PvcError

#: Events that change leases, the start-up event, and events dnsmasq may also send that carry no
#: DHCPv4 lease (TFTP transfers, ARP changes with --script-arp); those are ignored.
LEASE_EVENTS = ("add", "old", "del")
IGNORED = ("tftp", "arp", "arp-add", "arp-old", "arp-del", "relay-snoop")
INTERFACE_VARIABLES = ("DNSMASQ_BRIDGE_INTERFACE", "DNSMASQ_INTERFACE")


def _network(core: Cluster, network: str | None) -> str:
    from pvc.lib.dhcp_leases import vni_of_bridge
    from pvc.lib.ops.network import resolve_vni

    if network:
        return resolve_vni(core, network)
    for name in INTERFACE_VARIABLES:
        interface = os.environ.get(name)
        if interface:
            return resolve_vni(core, vni_of_bridge(interface))
    raise InvalidArgument("No network: give --network, or run from dnsmasq with DNSMASQ_BRIDGE_INTERFACE or "
                          "DNSMASQ_INTERFACE set to the network's bridge (vmbr<vni>).")


@click.command("hook")
@click.argument("action", type=click.Choice(("init",) + LEASE_EVENTS + IGNORED))
@click.argument("mac", required=False)
@click.argument("ip", required=False)
@click.argument("hostname", required=False)
@click.option("--network", metavar="NETWORK",
              help="VNI or description of the network (default: from the bridge vmbr<vni> in "
                   "DNSMASQ_BRIDGE_INTERFACE or DNSMASQ_INTERFACE).")
@click.pass_context
def lease_hook(ctx: click.Context, action: str, mac: str | None, ip: str | None, hostname: str | None,
               network: str | None) -> None:
    """Record DHCP leases from dnsmasq (its --dhcp-script).

    dnsmasq calls its script with ACTION MAC IP [HOSTNAME]: `add` and `old` record the lease
    (without HOSTNAME it has none; `old` at start-up, with DNSMASQ_DATA_MISSING set, keeps the
    recorded client ID when DNSMASQ_CLIENT_ID is not set), `del` removes it, and `init`
    prints the recorded leases in dnsmasq's lease-file format.
    Point --dhcp-script at a wrapper such as `exec pvc network lease hook --network 100 "$@"`
    (one per network: dnsmasq names no interface for `init`), and start dnsmasq with
    --leasefile-ro. DHCPv6 events and TFTP/ARP events are ignored.
    """
    if action in IGNORED:
        return
    if action in LEASE_EVENTS and (mac is None or ip is None):
        raise click.UsageError(f"'{action}' needs MAC and IP arguments.", ctx)
    if action == "init" and mac is not None:
        raise click.UsageError("'init' takes no further arguments.", ctx)
    from pvc.lib import dhcp_leases

    if action in LEASE_EVENTS and dhcp_leases.is_ipv6(ip):
        return  # a DHCPv6 lease (the library ignores those too): no need to find the network first
    core = ctx.find_object(CliContext).core()
    try:
        vni = _network(core, network)
        if action == "init":
            for line in dhcp_leases.lease_file_lines(core, vni):
                click.echo(line)
            return
        assert mac is not None and ip is not None  # a lease event: checked above
        if action == "del":
            dhcp_leases.forget_lease(core, vni, mac, ip)
        else:
            expiry = dhcp_leases.lease_expiry(os.environ.get("DNSMASQ_LEASE_EXPIRES"),
                                              os.environ.get("DNSMASQ_LEASE_LENGTH"), time.time())
            clientid = os.environ.get("DNSMASQ_CLIENT_ID") or None
            restarted = action == "old" and bool(os.environ.get("DNSMASQ_DATA_MISSING"))
            dhcp_leases.record_lease(core, vni, mac, ip, hostname or None, expiry,
                                     clientid, keep_clientid=restarted and clientid is None)
    except PvcError as e:
        raise CommandFailed(e) from None
