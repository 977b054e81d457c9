"""The supervisor of a multi-process `gih serve`.

`gih serve --workers N` execs this module once its checks are done (so it holds none of the
management command's imports). It imports the app's modules once, binds the socket, then forks
the N worker processes, which share those pages copy-on-write (uvicorn's own supervisor spawns
each worker afresh, and each then holds its own copy of every module: ~100 MB apiece). Every
worker builds the app and opens its own connections after the fork, in its own event loop.

SIGTERM or SIGINT goes on to every worker, which stops as `uvicorn` does (in-flight requests
get the grace period); the supervisor exits when they all have. A worker that dies otherwise
is replaced.
"""

import gc
import json
import logging
import os
import signal
import sys
import time
import traceback
from typing import Any

import uvicorn

log = logging.getLogger("gih.serve")

RESPAWN_PAUSE_S = 0.5  # between replacing workers that die at once (a crash loop stays slow)


class Supervisor:
    def __init__(self, options: dict[str, Any]) -> None:
        self.workers = int(options.pop("workers", 1))
        self.config = uvicorn.Config("app.main:create_app", factory=True, workers=1, **options)
        self.children: set[int] = set()
        self.stopping = False

    def run(self) -> None:
        import app.main  # noqa: F401  (the modules every worker shares)
        from app.storage import s3

        s3.preload()  # the S3 model every worker would parse at start (~14 MB): shared too

        socket = self.config.bind_socket()
        gc.collect()
        gc.freeze()  # the collector leaves the shared objects alone (their pages stay shared)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.stop)
        for _ in range(self.workers):
            self.fork(socket)
        while self.children:
            try:
                pid, _status = os.wait()
            except ChildProcessError:
                break
            self.children.discard(pid)
            if not self.stopping:
                log.warning("gih serve worker %s exited; starting another", pid)
                time.sleep(RESPAWN_PAUSE_S)
                if not self.stopping:
                    self.fork(socket)

    def fork(self, socket: Any) -> None:
        pid = os.fork()
        if pid == 0:  # the worker: uvicorn's server on the shared socket
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            code = 0
            try:
                uvicorn.Server(self.config).run(sockets=[socket])
            except BaseException:
                traceback.print_exc()  # os._exit below would swallow it
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children.add(pid)

    def stop(self, _signum: int, _frame: Any) -> None:
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)  # (a second SIGINT would cut the grace short)
            except ProcessLookupError:
                self.children.discard(pid)


def main() -> None:
    Supervisor(json.loads(sys.argv[1])).run()


if __name__ == "__main__":
    main()
