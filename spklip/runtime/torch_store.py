"""The workers' torch.distributed rendezvous store on loopback when the Ray node is (issue 10).

Ray Train sets up the process group with ``init_method="env://"``: rank 0 picks a free port
(`ray.train._internal.utils.get_address_and_port`) and ``torch.distributed`` starts a ``TCPStore`` server there,
which listens on every interface (``::``) with no authentication: anyone on the network could read and write the
rendezvous keys. torch 2.13 has no bind-address option, but its store is multi-tenant (a second ``TCPStore`` on a
port this process already serves reuses that server) and takes a listening socket (``master_listen_fd``). So
`LoopbackTorchConfig` has rank 0 bind 127.0.0.1 itself and start the store on that socket before Ray Train's own
setup, which then names that port: the process group's store is the loopback one. Only when the node address is
loopback (in-process Ray, the local cluster: `spklip.runtime.rayenv`); on a multi-node cluster the other nodes must reach
the store, and Ray Train's default is kept.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket

from ray.train.torch import TorchConfig

from spklip.runtime.ray_private import get_address_and_port, torch_backend_with_store_address

_SERVED: list = []  # (socket, TCPStore) pairs of this worker process: the server lives as long as the process


def loopback_store_address() -> tuple[str, int]:
    """On rank 0: Ray Train's ``(address, port)``; on a loopback node, that of a store started here on 127.0.0.1."""
    from torch.distributed import TCPStore  # in the worker: the driver needs no torch.distributed

    addr, port = get_address_and_port()
    if not ipaddress.ip_address(addr).is_loopback:
        return addr, port  # multi-node: the other nodes must reach the store
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    # world_size None and no waiting: this handle only starts the server; torch's own (multi-tenant) store counts
    # the ranks as they join
    store = TCPStore("127.0.0.1", port, None, True, timeout=datetime.timedelta(seconds=60), wait_for_workers=False,
                     multi_tenant=True, master_listen_fd=sock.fileno(), use_libuv=True)
    _SERVED.append((sock, store))
    return "127.0.0.1", port


# Ray Train calls `get_address_and_port` on rank 0 by its module's name: swapped for that one call only
_LoopbackTorchBackend = torch_backend_with_store_address(loopback_store_address)


class LoopbackTorchConfig(TorchConfig):
    """`TorchConfig` whose rendezvous store listens on 127.0.0.1 when the node does (module docstring)."""

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend
