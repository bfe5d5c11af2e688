"""Ansible connection into a booted systemd-nspawn container through ``nsenter``.

The deployment tests boot Debian with ``--private-network``: there is no SSH to reach
it. This runs each command with ``nsenter -t PID -a`` (PID = the container's PID 1 as
the host sees it, given as ``ansible_host``) and moves files through ``cat`` in the
same namespaces, so everything happens as it would over SSH as root.
"""

from __future__ import annotations

import subprocess
from typing import Any

from ansible.errors import AnsibleConnectionFailure  # type: ignore[import-untyped]
from ansible.plugins.connection import ConnectionBase  # type: ignore[import-untyped]

DOCUMENTATION = """
    name: nsenter
    short_description: run tasks inside a container through nsenter (tests only)
    description:
        - Runs commands in every namespace of a process (the container's PID 1) as root.
    author: glance-cache-agent maintainers
    options:
        remote_addr:
            description: PID (on the controller) of the container's init.
            type: str
            vars:
                - name: ansible_host
    extends_documentation_fragment:
        - connection_pipelining
"""

#: The container's own environment, not the controller's.
_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}


class Connection(ConnectionBase):  # type: ignore[misc]
    """Commands and files through ``nsenter -t PID -a``."""

    transport = "nsenter"
    has_pipelining = True

    def _connect(self) -> Connection:
        self._connected = True
        return self

    def _argv(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.get_option("remote_addr")), "-a", *argv]

    def exec_command(
        self, cmd: str, in_data: bytes | None = None, sudoable: bool = True
    ) -> tuple[int, bytes, bytes]:
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        result = subprocess.run(
            self._argv("/bin/sh", "-c", cmd), input=in_data or b"", capture_output=True, env=_ENV
        )
        return result.returncode, result.stdout, result.stderr

    def _cat(self, script: str, path: str, **streams: Any) -> None:
        result = subprocess.run(
            self._argv("/bin/sh", "-c", script, "sh", path), env=_ENV, stderr=subprocess.PIPE,
            **streams,
        )  # fmt: skip
        if result.returncode != 0:
            raise AnsibleConnectionFailure(f"{path}: {result.stderr.decode(errors='replace')}")

    def put_file(self, in_path: str, out_path: str) -> None:
        super().put_file(in_path, out_path)
        with open(in_path, "rb") as source:
            self._cat('cat > "$1"', out_path, stdin=source)

    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        with open(out_path, "wb") as dest:
            self._cat('cat "$1"', in_path, stdout=dest)

    def close(self) -> None:
        self._connected = False
