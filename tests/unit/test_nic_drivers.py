"""NIC backends as drivers (app.domain.nics): each built-in backend's -netdev, host links and
stored options from plain data, and a backend defined in this file alone (registered for one
test) usable through admission, validation, stored options, the qemu argv, the supervisor's
tap plans and the presenter's fields: adding a backend is adding a module."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import pytest

from app.db.models import Vm, VmNic
from app.db.repositories import BridgeFacts, vm_spec
from app.domain.errors import InvalidInput
from app.domain.nics import (
    HostLink,
    HostLinkNeed,
    NicDriver,
    backend_options,
    backends,
    dump_options,
    load_options,
    nic_driver,
    peer_nics,
    present_options,
    registered,
)
from app.domain.nics.macvtap import ARPHRD_ETHER, ParentLink, macvtap_name, parent_refusal
from app.domain.nics.spec import PORTS, Backend, NicSpec, SocketNet, UserNet, bounded
from app.domain.nics.tap import TapNetdev
from app.domain.qemu_argv import netdev_arg, qemu_argv
from app.domain.vms import Accelerator, BootSpec, PortForward, VmSpec, validate_vm
from app.supervisor.vm_taps import MacvtapPlan, tap_plans

MODELS = ["virtio-net-pci", "e1000"]
MAC = "52:54:00:00:00:01"


def nic(backend: str, **kw: Any) -> NicSpec:
    fields: dict[str, Any] = {"id": "n0", "model": "virtio-net-pci", "mac": MAC, **kw}
    return NicSpec(backend=backend, **fields)


def vm(*nics: NicSpec) -> VmSpec:
    return VmSpec(id="v1", name="vm1", boot=BootSpec(kernel="/k/vmlinuz"), nics=nics)


def netdevs(argv: Sequence[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]


def test_the_built_in_backends_are_registered_in_the_api_order() -> None:
    assert backends() == [b.value for b in Backend]
    assert all(nic_driver(b).name == b for b in backends())


@pytest.mark.parametrize(
    ("spec", "netdev", "links"),
    [
        (
            nic("bridge", tap="kv0a1b2c3d-0", queues=2),
            "tap,id=net0,ifname=kv0a1b2c3d-0,script=no,downscript=no,queues=2,vhost=off",
            (HostLinkNeed(HostLink.VM_TAP, "kv0a1b2c3d-0", 2),),
        ),
        (
            nic("tap", tap="tap1"),
            "tap,id=net0,ifname=tap1,script=no,downscript=no,vhost=off",
            (HostLinkNeed(HostLink.TAP, "tap1", 1),),
        ),
        (
            nic("user", user=UserNet(forwards=(PortForward("tcp", 5555, 22),))),
            "user,id=net0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,"
            "hostfwd=tcp:127.0.0.1:5555-:22",
            (),
        ),
        (
            nic("socket", socket=SocketNet("mcast", 1234, "230.0.0.1")),
            "socket,id=net0,mcast=230.0.0.1:1234,localaddr=127.0.0.1",
            (),
        ),
        (nic("hub", hub=3), "hubport,id=net0,hubid=3", ()),
    ],
)
def test_each_backend_writes_its_netdev_and_names_its_host_links(
    spec: NicSpec, netdev: str, links: tuple[HostLinkNeed, ...]
) -> None:
    validate_vm(vm(spec), MODELS)
    assert netdev_arg(0, spec, vhost_net=False) == netdev
    assert nic_driver(spec.backend).host_links(spec) == links


@pytest.mark.parametrize(
    "spec",
    [
        nic("bridge", tap="kv0a1b2c3d-0", hub=2, model=None),
        nic("tap", tap="tap1"),
        nic("user", user=UserNet(restrict=True, forwards=(PortForward("udp", 53, 53),))),
        nic("socket", socket=SocketNet("connect", 41000, peer="vm2/0")),
        nic("hub", hub=7),
        nic("port", tap="tap0123456789a", port="9b1f7c55-4a3e-4d8e-9a57-0c8b1d2e3f40"),
        nic("macvtap", tap="mv0a1b2c3d-0", parent="eth0", macvtap_mode="vepa"),
    ],
)
def test_stored_options_read_back_as_they_were_written(spec: NicSpec) -> None:
    stored = dump_options(spec)
    assert load_options(replace(spec, user=None, socket=None, hub=None), stored) == spec
    assert present_options(spec.backend, stored)["hub"] == spec.hub


def test_each_backend_names_the_option_it_needs() -> None:
    """What the API's NicIn requires per backend (its oneOf branches): the drivers say."""
    assert backend_options() == {
        "bridge": "bridge",
        "tap": "tap",
        "port": "port",
        "socket": "socket",
        "hub": "hub",
        "macvtap": "parent",
    }


def test_a_socket_listener_is_needed_by_the_connecting_nics_of_its_port() -> None:
    def socket(mode: str, port: int) -> dict[str, Any]:
        return dump_options(nic("socket", socket=SocketNet(mode, port)))

    own = [("socket", socket("listen", 4000)), ("user", {}), ("socket", socket("mcast", 4001))]
    others = [
        ("a", "socket", socket("connect", 4000)),
        ("b", "socket", socket("connect", 4001)),  # not a port the VM listens on
        ("c", "socket", socket("listen", 4000)),
        ("d", "socket", socket("mcast", 4000)),  # a group needs nobody
        ("e", "socket", {"socket": {"mode": "connect"}}),  # damaged: never stops a delete
        ("f", "vde", {}),  # unknown backend
    ]
    assert peer_nics(own, others) == ["a"]
    assert peer_nics([("socket", socket("connect", 4000))], others) == []


def test_stored_options_that_cannot_be_read_are_invalid_input_not_a_key_error() -> None:
    with pytest.raises(InvalidInput, match="stored socket options cannot be used"):
        load_options(nic("socket"), {"socket": {"mode": "listen"}})
    with pytest.raises(InvalidInput, match="stored user options"):
        load_options(nic("user"), {"user": {"nonsense": 1}})


def test_an_unknown_backend_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(InvalidInput, match="unknown NIC backend 'vde'; known: bridge, tap"):
        validate_vm(vm(nic("vde")), MODELS)
    with pytest.raises(InvalidInput, match="unknown NIC backend"):
        load_options(nic("vde"), {})
    assert present_options("vde", {"hub": 1}) == {"hub": 1}  # shown, flagged elsewhere


# ---- a backend this file adds ---------------------------------------------------------------


class StreamDriver(NicDriver):
    """QEMU's `-netdev stream` (QEMU 7.2+) connecting to a loopback TCP port (another VM's
    listening socket NIC, say: it then needs that VM)."""

    name: ClassVar[str] = "stream"
    option: ClassVar[str | None] = "stream"
    has_peers: ClassVar[bool] = True

    def needs(self, options: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({f"tcp:127.0.0.1:{int(options['stream']['port'])}"})

    def admit(self, nic: NicSpec, request: Mapping[str, Any], claims: Any) -> NicSpec:
        port = int(request["stream"]["port"])
        claims.claim_port("tcp", "127.0.0.1", port)
        return replace(nic, socket=SocketNet("connect", port))

    def validate(self, nic: NicSpec) -> None:
        if nic.socket is None:
            raise InvalidInput("a stream NIC needs a port")
        bounded("stream port", nic.socket.port, PORTS)

    def load(self, nic: NicSpec, options: Mapping[str, Any]) -> NicSpec:
        return replace(nic, socket=SocketNet("connect", int(options["stream"]["port"])))

    def dump(self, nic: NicSpec) -> dict[str, Any]:
        assert nic.socket is not None
        return {"stream": {"port": nic.socket.port}}

    def netdev(
        self,
        netdev_id: str,
        nic: NicSpec,
        vhost_net: bool,
        fds: Sequence[int] | None = None,
        vhost_fds: Sequence[int] = (),
    ) -> str:
        assert nic.socket is not None
        return (
            f"stream,id={netdev_id},server=off,addr.type=inet,addr.host=127.0.0.1,"
            f"addr.port={nic.socket.port}"
        )

    def present(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"stream_port": options["stream"]["port"]}


class Claims:
    """Records what a driver claims (NicClaims, answered without a database)."""

    def __init__(self) -> None:
        self.ports: list[tuple[str, str, int]] = []

    def claim_port(self, protocol: str, address: str, port: int) -> None:
        self.ports.append((protocol, address, port))


@pytest.fixture
def stream() -> Iterator[NicDriver]:
    with registered(StreamDriver) as driver:
        yield driver
    assert "stream" not in backends()


def test_a_backend_added_by_one_module_works_end_to_end(stream: NicDriver) -> None:
    claims = Claims()
    spec = stream.admit(nic("stream"), {"stream": {"port": 4444}}, claims)
    assert claims.ports == [("tcp", "127.0.0.1", 4444)]
    validate_vm(vm(spec), MODELS)  # the shared rules, then the driver's
    with pytest.raises(InvalidInput, match="stream port"):
        validate_vm(vm(replace(spec, socket=SocketNet("connect", 0))), MODELS)
    with pytest.raises(InvalidInput, match=r"multiqueue needs .* on a bridge or tap backend"):
        validate_vm(vm(replace(spec, queues=2)), MODELS)

    # stored as a NIC row, read back by the repository, launched by the argv builder
    row = VmNic(
        id="n0",
        vm_id="v1",
        position=0,
        model="virtio-net-pci",
        mac=MAC,
        backend="stream",
        queues=1,
        vhost="auto",
        link_up=True,
        options=dump_options(spec),
    )
    machine = Vm(id="v1", name="vm1", vcpus=1, memory_mib=64, machine="pc")
    machine.accelerator, machine.boot = "tcg", {"kernel": "/k/vmlinuz"}
    loaded = vm_spec(machine, [row])
    assert loaded.nics == (spec,)
    argv = qemu_argv(loaded, "qemu-system-x86_64", Accelerator.TCG)
    assert netdevs(argv) == [
        "stream,id=net0,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=4444"
    ]
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,id=nic0" in argv
    assert present_options("stream", row.options) == {"hub": None, "stream_port": 4444}
    assert present_options("stream", {"hub": 1}) == {"hub": 1}  # damaged: listed, no 500
    # it needs no kernel link: the VM worker plans no tap for it
    assert tap_plans(machine, [row], {}) == []
    # the API's per-backend option and in-use protection ask its driver
    assert backend_options()["stream"] == "stream"
    listener = dump_options(nic("socket", socket=SocketNet("listen", 4444)))
    assert peer_nics([("socket", listener)], [("s", "stream", row.options)]) == ["s"]


class BridgedMirror(TapNetdev):
    """A second backend whose tap the VM worker makes on a bridge (as `bridge` does)."""

    name: ClassVar[str] = "mirror"
    host_link: ClassVar[HostLink] = HostLink.VM_TAP


def test_a_backend_that_needs_a_vm_tap_gets_one_planned_by_the_worker() -> None:
    with registered(BridgedMirror):
        row = VmNic(
            id="n0",
            vm_id="v1",
            position=0,
            model="virtio-net-pci",
            mac=MAC,
            backend="mirror",
            tap_name="kv00000001-0",
            bridge_id="b1",
            queues=2,
            mtu=None,
            options={},
        )
        plans = tap_plans(Vm(id="v1"), [row], {"b1": BridgeFacts("br0", 1400)}, (1000, 1000))
        assert [(p.name, p.bridge, p.uid, p.multi_queue, p.mtu) for p in plans] == [
            ("kv00000001-0", "br0", 1000, True, 1400)
        ]
        spec = nic("mirror", tap="kv00000001-0", queues=2)
        validate_vm(vm(spec), MODELS)  # multiqueue: it is tap-backed
        assert netdev_arg(0, spec, False, fds=[7, 8]) == "tap,id=net0,fds=7:8,vhost=off"


def test_a_macvtap_reaches_qemu_as_a_descriptor_only() -> None:
    spec = nic("macvtap", tap="mv0a1b2c3d-0", parent="eth0", macvtap_mode="bridge")
    validate_vm(vm(spec), MODELS)
    assert netdev_arg(0, spec, False, [23]) == "tap,id=net0,fd=23,vhost=off"
    with pytest.raises(InvalidInput, match="descriptor"):
        netdev_arg(0, spec, vhost_net=False)  # qemu's ifname= opens /dev/net/tun, no macvtap
    assert nic_driver("macvtap").host_links(spec) == (
        HostLinkNeed(HostLink.VM_MACVTAP, "mv0a1b2c3d-0", 1),
    )
    for bad in (replace(spec, macvtap_mode="source"), replace(spec, parent="a" * 16)):
        with pytest.raises(InvalidInput):
            validate_vm(vm(bad), MODELS)
    assert present_options("macvtap", dump_options(spec)) == {
        "hub": None,
        "parent": "eth0",
        "macvtap_mode": "bridge",
    }


def test_a_macvtap_parent_must_be_a_free_ethernet_host_link() -> None:
    def link(**kw: Any) -> ParentLink:
        fields: dict[str, Any] = {
            "name": "eth0", "ifindex": 2, "kind": None, "link_type": ARPHRD_ETHER,
            "loopback": False, **kw,
        }  # fmt: skip
        return ParentLink(**fields)

    assert parent_refusal("eth0", link()) is None
    assert parent_refusal("eth0", link(kind="veth")) is None
    refusals = {
        "no such interface": None,
        "loopback": link(loopback=True, link_type=772),
        "not an Ethernet link": link(link_type=65534, kind="tun"),
        "kvmnetd's own links": link(mark="kvmnetd:bridge:1"),
        "a port of 'br0'": link(master="br0"),
    }
    for reason, candidate in refusals.items():
        assert reason in (parent_refusal("eth0", candidate) or ""), reason
    assert macvtap_name("0a1b2c3d-4e5f-6789-abcd-ef0123456789", 12) == "mv0a1b2c3d-12"


def test_a_macvtap_nic_gets_a_macvtap_plan_on_its_parent() -> None:
    row = Vm(id="v1", name="vm1")
    nics = [
        VmNic(
            id="n0", vm_id="v1", position=0, mac=MAC, backend="macvtap", queues=1,
            tap_name="mv0a1b2c3d-0", options={"parent": "eth0", "macvtap_mode": "private"},
        )
    ]  # fmt: skip
    (plan,) = tap_plans(row, nics, {}, (999, 998))
    assert (plan.name, plan.bridge, plan.uid, plan.homeless) == ("mv0a1b2c3d-0", None, 999, False)
    assert plan.macvtap == MacvtapPlan("eth0", "private", MAC)
