"""The peer gateway: LiteLLM's proxy in its own virtualenv, with no database, in front of the same
fake upstream (`litellm --config ... --num_workers 2`).

Without a database LiteLLM checks the master key only (no key lookup, no spend tracking, no
queue, no storage): it does less work per request than we do.
"""

import subprocess
import time
import urllib.request
from pathlib import Path

from bench.procs import Tree
from bench.stack import stop_group, wait_for_log
from tests.fakes.processes import app_env, free_port

VENV = Path(__file__).resolve().parent / ".venv-litellm"
MASTER_KEY = "sk-bench-" + "0123456789abcdef" * 2
MODEL = "gpt-image-2"

CONFIG = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {api_base}
      api_key: sk-bench-dummy-upstream-key
general_settings:
  master_key: {master_key}
"""


def install(spec: str) -> str:
    """Create bench/.venv-litellm with `spec` installed (once); returns LiteLLM's version."""
    python = VENV / "bin" / "python"
    if not (VENV / "bin" / "litellm").exists():
        print(f"  installing {spec} into {VENV} (first run only) ...", flush=True)
        subprocess.run(["python3", "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", spec], check=True)
    out = subprocess.run([str(python), "-c", "import importlib.metadata as m; "
                          "print(m.version('litellm'))"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


class LiteLLM:
    def __init__(self, folder: Path, upstream_base_url: str) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.upstream = upstream_base_url
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tree(self) -> Tree:
        assert self.process is not None
        return Tree("litellm", self.process.pid)

    def start(self, timeout: float = 180) -> "LiteLLM":
        config = self.folder / "litellm.yaml"
        config.write_text(CONFIG.format(model=MODEL, api_base=self.upstream,
                                        master_key=MASTER_KEY))
        self.port = free_port()
        log = self.folder / "litellm.log"
        # No DATABASE_URL: the database mode cannot start offline. The cost map is the local
        # copy (the remote one is unreachable here). Logging stays at its defaults (an access
        # line per request, to the log file), as ours does.
        env = app_env({"LITELLM_LOCAL_MODEL_COST_MAP": "True"})
        env.pop("DATABASE_URL", None)
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [str(VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
                 "--port", str(self.port), "--num_workers", "2"],
                cwd=self.folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        began = time.monotonic()
        while True:
            try:
                urllib.request.urlopen(f"{self.base}/health/liveliness", timeout=2).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() - began > timeout:
                    tail = log.read_bytes()[-3000:].decode(errors="replace")
                    self.stop()
                    raise RuntimeError(f"litellm did not start:\n{tail}") from None
                time.sleep(0.5)
        # The health check answers as soon as one worker process is up: wait for both.
        try:
            wait_for_log(self.process, log, b"Application startup complete", "litellm",
                         timeout=max(10.0, timeout - (time.monotonic() - began)), count=2)
        except RuntimeError:
            self.stop()
            raise
        print(f"  litellm up in {time.monotonic() - began:.1f} s on {self.base} "
              f"(log {log})")
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, timeout=15)
