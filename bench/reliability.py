"""What hostile requests cost the server we ship: the figures behind the bounds that
tests/reliability/test_hostile_input.py asserts (a refusal within seconds, in bounded memory).

    .venv/bin/python -m bench.reliability [--out bench/results/reliability.json]

Against `gih serve` in the embedded default (an empty folder, SQLite, local storage, the mock
provider, a TMPDIR of its own), for each hostile body: the seconds until the 400, how much of the
body the client got to send by then, and how much the server's peak RSS (VmHWM) grew; then 40
clients that stall mid-body: the server's open sockets and upload temp files before, while they
stall, and after they close. Prints one line per case and writes the figures as JSON.
"""

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from app.config import Settings
from bench.procs import peak_rss_kb, reset_peak
from tests.conftest import create_account
from tests.fakes.processes import start_serve, stop_process
from tests.payloads import (
    BASE_PARTS,
    MULTIPART,
    form,
    form_part,
    jpeg_bomb,
    noise_png,
    png_bomb,
    webp_bomb,
)
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
BASE = {"model": "gpt-image-2", "prompt": "a red bicycle"}
MB = 1024 * 1024


class Server:
    """The embedded `gih serve` in a folder of its own, with one user and key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tmp = folder / "tmp"
        self.tmp.mkdir()
        self.process, self.base = start_serve({"TMPDIR": str(self.tmp)}, folder / "serve.log",
                                              workers=None, cwd=folder, set_base_url=False)
        self.port = int(self.base.rsplit(":", 1)[1])
        settings = Settings(database_url=f"sqlite:///{folder / 'data' / 'gih.db'}")
        self.key = asyncio.run(create_account(settings, 1_000_000)).key

    def curl(self, *args: str) -> tuple[int, int, float]:
        """(status, bytes uploaded, seconds) of one POST /api/v1/images/generations."""
        result = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_upload} %{time_total}",
             f"{self.base}/api/v1/images/generations", "-H", f"Authorization: Bearer {self.key}",
             *args], capture_output=True, text=True, timeout=300)
        status, uploaded, seconds = result.stdout.split()
        return int(status), int(uploaded), float(seconds)

    def open_fds(self) -> tuple[int, int]:
        """(sockets, upload temp files) the server holds open."""
        links = []
        for fd in os.listdir(f"/proc/{self.process.pid}/fd"):
            try:
                links.append(os.readlink(f"/proc/{self.process.pid}/fd/{fd}"))
            except FileNotFoundError:
                continue
        return (sum(link.startswith("socket:") for link in links),
                sum(link.startswith(str(self.tmp)) for link in links))


def cases(folder: Path) -> dict[str, Callable[[], list[str]]]:
    """name -> curl arguments (built when the case runs, files written into `folder`)."""
    def file(name: str, data: bytes) -> str:
        path = folder / name
        path.write_bytes(data)
        return str(path)

    def sparse(name: str, size: int) -> str:
        path = folder / name
        with open(path, "wb") as out:
            out.write(noise_png(32))
            out.truncate(size)  # no 200 MB written to disk
        return str(path)

    def big_json() -> str:
        return file("big.json", json.dumps({**BASE, "padding": "x" * (10 * MB)}).encode())

    def parts(kind: str) -> str:
        if kind == "fields":
            many = [form_part(f"field{i}", b"v" * 20) for i in range(1000)]
        elif kind == "references":
            png = noise_png(32)
            many = [form_part("reference_image", png, f"{i}.png", "image/png")
                    for i in range(1000)]
        else:
            many = [form_part(f"file{i}", b"\0" * 100 * 1024, f"{i}.bin") for i in range(1000)]
        return file(f"parts-{kind}.bin", form(*BASE_PARTS, *many))

    def blob_51_mb() -> str:
        path = folder / "51mb.png"
        if not path.exists():
            with open(path, "wb") as out:
                out.write(noise_png(32))
                out.write(os.urandom(51 * MB))
        return str(path)

    json_ct = ["-H", "Content-Type: application/json"]
    multipart = ["-H", f"Content-Type: {MULTIPART}"]
    fields = ["-F", "model=gpt-image-2", "-F", "prompt=x"]
    return {
        "10 MB JSON body": lambda: [*json_ct, "--data-binary", f"@{big_json()}"],
        "10 MB JSON body, chunked": lambda: [*json_ct, "-H", "Transfer-Encoding: chunked",
                                             "--data-binary", f"@{big_json()}"],
        "1,000 small multipart fields": lambda: [*multipart, "--data-binary",
                                                 f"@{parts('fields')}"],
        "1,000 reference images": lambda: [*multipart, "--data-binary",
                                           f"@{parts('references')}"],
        "1,000 files of 100 KB (100 MB)": lambda: [*multipart, "--data-binary",
                                                   f"@{parts('files')}"],
        "png bomb 100000x100000": lambda: [
            *fields, "-F", f"reference_image=@{file('bomb.png', png_bomb())}"],
        "jpeg bomb 65500x65500": lambda: [
            *fields, "-F", f"reference_image=@{file('bomb.jpg', jpeg_bomb())}"],
        "webp bomb 16384x16384": lambda: [
            *fields, "-F", f"reference_image=@{file('bomb.webp', webp_bomb())}"],
        "51 MB reference, chunked": lambda: [
            *fields, "-H", "Transfer-Encoding: chunked",
            "-F", f"reference_image=@{blob_51_mb()};type=image/png"],
        "51 MB unknown file field": lambda: [*fields, "-F", f"attachment=@{blob_51_mb()}"],
        "51 MB text field": lambda: [*fields, "-F", f"prompt2=<{blob_51_mb()}"],
        "200 MB reference": lambda: [
            *fields, "-F", f"reference_image=@{sparse('200mb.png', 200 * MB)}"],
    }


def measure(server: Server, args: list[str]) -> dict[str, float]:
    pid = server.process.pid
    reset_peak(pid)
    before = peak_rss_kb(pid)
    status, uploaded, seconds = server.curl(*args)
    return {"status": status, "seconds": round(seconds, 3),
            "uploaded_mb": round(uploaded / MB, 1),
            "peak_rss_growth_mb": round((peak_rss_kb(pid) - before) / 1024, 1)}


def stalled_clients(server: Server, count: int = 40) -> dict[str, object]:
    """`count` clients send part of a body (half JSON, half multipart stopping inside a
    reference image) and stall; then they close."""
    json_body = json.dumps({**BASE, "prompt": "p" * 30_000}).encode()
    form_body = form(*BASE_PARTS, form_part("reference_image", noise_png(512), "r.png",
                                            "image/png"))

    def start_partial(body: bytes, content_type: str, fraction: float) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        head = (f"POST /api/v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {server.key}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        sock.sendall(head + body[:int(len(body) * fraction)])
        return sock

    before = server.open_fds()
    began = time.monotonic()
    sockets = [start_partial(json_body, "application/json", 0.5) if i % 2
               else start_partial(form_body, MULTIPART, 0.6) for i in range(count)]
    wait_until(lambda: server.open_fds()[1] == count // 2, timeout=30,
               what="the stalled uploads' temp files")
    stalled, held_after = server.open_fds(), time.monotonic() - began
    for sock in sockets:
        sock.close()
    wait_until(lambda: server.open_fds()[1] == 0, timeout=30, what="the temp files removed")
    return {"clients": count, "sockets_and_temp_files_before": before,
            "while_stalled": stalled, "after_closing": server.open_fds(),
            "seconds_to_hold_them_all": round(held_after, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "reliability.json")
    args = parser.parse_args(argv)
    os.chdir(REPO)  # the fakes and the app run from the repository root
    folder = Path(tempfile.mkdtemp(prefix="gih-bench-reliability-"))
    server = None
    try:
        server = Server(folder)
        figures: dict[str, object] = {}
        for name, build in cases(folder).items():
            figures[name] = measure(server, build())
            print(f"  {name:34} {figures[name]}")
        figures["stalled clients"] = stalled_clients(server)
        print(f"  {'stalled clients':34} {figures['stalled clients']}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures written to {args.out}")
        return 0
    finally:
        if server is not None:
            stop_process(server.process)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
