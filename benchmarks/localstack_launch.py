"""Run `localstack.runtime.main` with every twisted TCP listener forced onto the loopback interface.

LocalStack's twisted gateway builds `endpoints.TCP4ServerEndpoint(reactor, port)` without an interface
("TODO: interface = host?" in localstack/runtime/server/twisted.py), so it binds 0.0.0.0 whatever
GATEWAY_LISTEN says. Every twisted server endpoint ends in `reactor.listenTCP(port, factory, backlog,
interface)`; this launcher wraps that one method on the installed reactor: a wildcard interface ("",
"0.0.0.0", "::") becomes LOCALSTACK_LAUNCH_BIND (default 127.0.0.1), and any other non-loopback interface
is refused. It then runs LocalStack's own entry point unchanged.

Run it with LocalStack's interpreter, by path (it imports nothing from the project):
    <localstack-venv>/bin/python /abs/path/benchmarks/localstack_launch.py
"""

from __future__ import annotations

import ipaddress
import os
import runpy
import sys

_WILDCARDS = ("", "0.0.0.0", "::", "*")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def patch_reactor(bind: str) -> None:
    if not _loopback(bind):
        raise SystemExit(f"localstack_launch: refusing non-loopback bind address {bind!r}")
    from twisted.internet import reactor  # installs the default reactor, as LocalStack's import would

    original = reactor.listenTCP

    def listen_tcp(port: int, factory: object, backlog: int = 50, interface: str = "") -> object:
        if interface in _WILDCARDS:
            interface = bind
        elif not _loopback(interface):
            raise RuntimeError(f"localstack_launch: refusing to listen on non-loopback {interface}:{port}")
        return original(port, factory, backlog=backlog, interface=interface)

    reactor.listenTCP = listen_tcp


def main() -> None:
    # run by path, sys.path[0] is benchmarks/: drop it so none of its modules can shadow LocalStack's imports
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    patch_reactor(os.environ.get("LOCALSTACK_LAUNCH_BIND", "127.0.0.1"))
    sys.argv = ["localstack.runtime.main", *sys.argv[1:]]
    runpy.run_module("localstack.runtime.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
