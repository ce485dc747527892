"""Several "hosts" on this machine: Linux network namespaces on one private subnet.

Each host is a namespace with its own `lo` and one veth whose peer sits on a bridge in a
hub namespace, so the hosts reach each other on 10.231.0.0/24 and nothing else: no
route to the machine's own interfaces. `NetnsHosts` creates everything and removes it
(processes first) even when a test fails half-way. Every process a test starts on a host
runs through `ip netns exec`, so it is in that host's namespace and is killed by pid.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

SUBNET = ipaddress.ip_network("10.231.0.0/24")
LOOPBACK_NETS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
WILDCARDS = {"0.0.0.0", "::", "*"}


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here (no CAP_NET_ADMIN, no `ip`), or None."""
    probe = f"tnrprobe{os.getpid()}"
    try:
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` cannot run: {exc}"
    if made.returncode != 0:
        return f"`ip netns add` failed (CAP_NET_ADMIN is needed): {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@dataclass
class Host:
    name: str  # "a", "b", ...
    netns: str
    address: str
    interface: str
    processes: list[subprocess.Popen] = field(default_factory=list)

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(argv), env=env, capture_output=True, text=True, timeout=timeout, **kw)

    def start(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(self.command(argv), env=env, start_new_session=True, **kw)
        self.processes.append(proc)
        return proc

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True, timeout=10)
        return [int(p) for p in out.stdout.split()]

    def listening(self) -> list[tuple[str, str]]:
        """(local address, process) of every listening TCP socket in this host."""
        out = self.run(["ss", "-Hltnp"], timeout=10).stdout
        found = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 4:
                address = parts[3].rsplit(":", 1)[0].strip("[]")
                found.append((address, " ".join(parts[5:])))
        return found

    def kill_all(self) -> None:
        """SIGKILL every process in this host's namespace (all were started by the test)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.processes:
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)


class NetnsHosts:
    """`n` hosts a, b, c... at 10.231.0.1, .2, .3..., joined by a bridge in a hub namespace."""

    def __init__(self, n: int) -> None:
        tag = uuid.uuid4().hex[:6]
        self.hub = f"tnr{tag}hub"
        self.hosts: list[Host] = []
        self._made: list[str] = []
        try:
            self._add(self.hub)
            _ip("-n", self.hub, "link", "set", "lo", "up")
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "link", "set", "br0", "up")
            for i in range(n):
                name = "abcdefgh"[i]
                netns = f"tnr{tag}{name}"
                self._add(netns)
                address = str(SUBNET.network_address + i + 1)
                interface = f"veth{name}"
                peer = f"port{name}"
                _ip("link", "add", interface, "netns", netns, "type", "veth", "peer", "name", peer, "netns", self.hub)
                _ip("-n", self.hub, "link", "set", peer, "master", "br0", "up")
                _ip("-n", netns, "link", "set", "lo", "up")
                _ip("-n", netns, "addr", "add", f"{address}/{SUBNET.prefixlen}", "dev", interface)
                _ip("-n", netns, "link", "set", interface, "up")
                self.hosts.append(Host(name=name, netns=netns, address=address, interface=interface))
        except BaseException:
            self.close()
            raise

    def _add(self, netns: str) -> None:
        _ip("netns", "add", netns)
        self._made.append(netns)

    def __getitem__(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def close(self) -> None:
        for host in self.hosts:
            host.kill_all()
        for netns in reversed(self._made):
            with contextlib.suppress(Exception):
                subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=10)
        self._made.clear()


def exposed_listeners(host: Host) -> list[tuple[str, str]]:
    """Listening sockets of `host` on anything but loopback or the test subnet.

    A wildcard (0.0.0.0, ::) inside a host counts as confined only because the host's
    namespace has no address outside loopback and the test subnet (checked here too).
    """
    out = host.run(["ip", "-o", "addr", "show"], timeout=10).stdout
    own = [line.split()[3].split("/")[0] for line in out.splitlines()]
    stray_addresses = [a for a in own if not _confined(a)]
    bad = [(a, p) for a, p in host.listening() if a not in WILDCARDS and not _confined(a)]
    if stray_addresses:
        bad += [(a, "an interface address outside the test subnet") for a in stray_addresses]
    return bad


def _confined(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 6 and ip.is_link_local:
        return True  # fe80:: on the veth: reaches only the hub's bridge
    return ip in SUBNET or any(ip in net for net in LOOPBACK_NETS)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
