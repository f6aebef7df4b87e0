"""L2 stability end to end: the real daemon in a namespace with a managed network on br0 and a
client in a namespace of its own (a veth into the bridge) that pings the gateway every 0.2 s
while a tap with the very low MAC 02:00:00:00:00:02 joins br0 and is deleted again.

A bridge whose MAC nobody set takes the lowest MAC of its ports, so before this the gateway's
MAC changed twice; a client that had learned the tap-time MAC (its ARP entry is refreshed
every 15-45 s; flushing it stands in for that) then sent to a MAC nobody owned any more and
lost the gateway until its ARP entry was re-resolved (~26 s was reported). Now the bridge
keeps the MAC generated at its creation: the bridge's MAC, read back through netlink all the
time, never changes, and no echo is lost.
"""

from __future__ import annotations

import threading
import time

import icmplib
from pyroute2 import IPRoute

from tests.daemon import Daemon
from tests.e2e.helpers import ok
from tests.e2e.test_uplink import Pinger
from tests.netns_tools import in_namespace, ip, links, throwaway_netns

SUBNET = "192.168.100.0/24"
GATEWAY = "192.168.100.1"
CLIENT = "192.168.100.50/24"
LOW_MAC = "02:00:00:00:00:02"  # lower than any random MAC: the kernel's pick as bridge MAC


class MacWatch:
    """Reads br0's MAC through netlink every 20 ms on a thread; remembers every value seen."""

    def __init__(self, netns: str) -> None:
        self.seen: list[str | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(netns,), daemon=True)

    def _run(self, netns: str) -> None:
        with IPRoute(netns=netns) as ipr:
            (index,) = ipr.link_lookup(ifname="br0")
            while not self._stop.is_set():
                (msg,) = ipr.link("get", index=index)
                mac = msg.get_attr("IFLA_ADDRESS")
                if not self.seen or self.seen[-1] != mac:
                    self.seen.append(mac)
                time.sleep(0.02)

    def __enter__(self) -> MacWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_the_gateway_mac_never_changes_and_a_pinging_client_loses_nothing(
    daemon: Daemon,
) -> None:
    with daemon.client() as client, throwaway_netns() as outside:
        bridge = ok(client.post("/v1/bridges?wait=10", json={"name": "br0"}), 201)
        network = {"name": "lan0", "bridge": "br0", "subnet": SUBNET, "nat": {"enabled": False}}
        ok(client.post("/v1/networks?wait=20", json=network), 201)

        # the client: a veth from the bridge into a namespace of its own
        ip(daemon.netns, "link", "add", "kvt-c0", "type", "veth", "peer", "name", "eth0")
        ip(daemon.netns, "link", "set", "eth0", "netns", outside)
        ip(daemon.netns, "link", "set", "kvt-c0", "master", "br0", "up")
        ip(outside, "addr", "add", CLIENT, "dev", "eth0")
        ip(outside, "link", "set", "eth0", "up")
        answered = in_namespace(outside, lambda: icmplib.ping(GATEWAY, count=3, privileged=True))
        assert answered.is_alive  # resolved and answering

        with MacWatch(daemon.netns) as watch:
            pinger = Pinger(outside, GATEWAY, interval=0.2)
            try:
                time.sleep(1)
                tap = ok(
                    client.post(
                        "/v1/taps?wait=10", json={"name": "tap1", "bridge": "br0", "mac": LOW_MAC}
                    ),
                    201,
                )
                assert links(daemon.netns)["tap1"].master == "br0"
                # the client refreshes its ARP entry while the tap is there (it would within
                # 15-45 s on its own): it learns whatever MAC the gateway has now
                ip(outside, "neigh", "flush", "dev", "eth0")
                time.sleep(1.5)
                assert client.delete(f"/v1/taps/{tap['id']}?wait=10").status_code == 204
                assert "tap1" not in links(daemon.netns)
                time.sleep(4)  # pings to a MAC nobody owns would be lost all this time
            finally:
                sent, lost = pinger.stop()

        assert sent >= 20 and lost == 0, f"{lost} of {sent} echoes to the gateway were lost"
        assert watch.seen == [bridge["generated_mac"]], watch.seen
        assert ok(client.get("/v1/bridges/br0"), 200)["observed_mac"] == bridge["generated_mac"]
