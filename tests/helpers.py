"""Helpers more than one test module uses: the `gih` command, plain HTTP, request bodies and
images, the checks of a refused request, a process's memory, and which process of a
`gih serve --workers N` holds a connection."""

import contextlib
import http.client
import io
import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image
from sqlalchemy import func, select

from app.models import CreditLedgerEntry, Generation
from tests.conftest import bearer
from tests.fakes.processes import GIH
from tests.waiting import wait_until

# --- the `gih` command -------------------------------------------------------------------------


def run(*args: str, env: dict[str, str], cwd: Path | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([GIH, *args], env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"gih {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def run_json(*args: str, env: dict[str, str], cwd: Path | None = None):
    return json.loads(run(*args, "--json", env=env, cwd=cwd).stdout)


# --- plain HTTP --------------------------------------------------------------------------------


def get(url: str, key: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --- request bodies and images -----------------------------------------------------------------

BASE = {"model": "gpt-image-2", "prompt": "a red bicycle"}


def image_bytes(fmt: str, size: tuple[int, int] = (32, 32), color: str = "green") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, fmt)
    return out.getvalue()


PNG_BYTES = image_bytes("PNG")


def webp_bytes() -> bytes:
    return image_bytes("WEBP", (40, 30), "blue")


def jpeg_bytes() -> bytes:
    return image_bytes("JPEG", (30, 40), "white")


# --- a refused request -------------------------------------------------------------------------


def assert_400(response, param: str | None = None) -> dict:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["message"]
    if param:
        assert error.get("param") == param, error
    return error


async def assert_nothing_charged(client, user, key: str, credits_before: int) -> None:
    balance = (await client.http.get("/api/v1/credits", headers=bearer(key))).json()["credits"]
    assert balance == credits_before
    async with client.session() as session:
        generations = await session.scalar(select(func.count()).select_from(Generation)
                                           .where(Generation.user_id == user.id))
        movements = await session.scalar(select(func.count()).select_from(CreditLedgerEntry)
                                         .where(CreditLedgerEntry.user_id == user.id))
    assert (generations, movements) == (0, 1)  # the grant only


# --- a process's memory ------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the highest resident memory the process has had."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match, status
    return int(match.group(1)) / 1024


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


# --- which process of a `gih serve --workers N` holds a connection ----------------------------


def held_connections(pids: list[int], port: int) -> dict[int, int]:
    """{client port: pid} of the established connections to `port` whose server side one of
    `pids` holds."""
    inodes = {}
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = pid
    owners = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if int(local.split(":")[1], 16) == port and state == "01" and inode in inodes:
            owners[int(remote.split(":")[1], 16)] = inodes[inode]
    return owners


def connection_owners(server_pid: int, port: int) -> dict[int, int]:
    """{client port: pid of the worker process holding the server side of that connection}."""
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    return held_connections([int(child) for child in children], port)


def connections_to_every_process(base: str, server_pid: int, path: str,
                                 headers: dict[str, str] | None = None, processes: int = 2,
                                 timeout: float = 30) -> list[http.client.HTTPConnection]:
    """Keep-alive connections to `gih serve`, one GET `path` (answered 200) on each, opened in
    batches until each of its `processes` worker processes holds some."""
    port = urlsplit(base).port
    assert port is not None
    connections: list[http.client.HTTPConnection] = []

    def every_process_holds_some() -> bool:
        batch = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(8)]
        for connection in batch:
            connection.request("GET", path, headers=headers or {})
        for connection in batch:
            response = connection.getresponse()
            assert response.status == 200, response.read()
            response.read()
        connections.extend(batch)
        owners = connection_owners(server_pid, port)
        held = {owners.get(c.sock.getsockname()[1]) for c in connections if c.sock} - {None}
        return len(held) >= processes

    wait_until(every_process_holds_some, timeout=timeout, interval=0.05,
               what=f"connections held by {processes} processes of {base}")
    return connections
