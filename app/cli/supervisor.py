"""The supervisor of a multi-process `gih serve`.

`gih serve --workers N` execs this module once its checks are done, so the process that
supervises the workers holds uvicorn only, not the management command's imports (about 30 MB
less); every worker process imports the app itself.
"""

import json
import sys

import uvicorn


def main() -> None:
    uvicorn.run("app.main:create_app", factory=True, **json.loads(sys.argv[1]))


if __name__ == "__main__":
    main()
