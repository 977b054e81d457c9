"""The `gih` command as an operator runs it: a real process, real databases."""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import TEST_SECRET

GIH = str(Path(sys.executable).parent / "gih")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GIH_", "OPENAI_", "AWS_"))}
    env.update(extra)
    return env


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


@pytest.fixture
def pg_env(pg_url: str) -> dict[str, str]:
    return clean_env(GIH_DATABASE_URL=pg_url, GIH_SECRET_KEY=TEST_SECRET, GIH_PROVIDER="mock")


def email() -> str:
    return f"op{secrets.token_hex(5)}@example.com"


def get(url: str, key: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_users_keys_credits_round_trip(pg_env: dict[str, str]) -> None:
    who = email()
    user = run_json("users", "create", who, "--credits", "100", "--credits-expire-at",
                    "2031-01-01", "--account-type", "PRO", env=pg_env)
    assert user["email"] == who and user["credits"] == 100 and user["account_type"] == "PRO"

    key = run_json("keys", "create", who, "--name", "ci", "--expires-in-days", "30", env=pg_env)
    assert key["key"].startswith("gih_live_") and len(key["key"]) == 41
    listed = run_json("keys", "list", who, env=pg_env)
    assert [k["id"] for k in listed] == [key["id"]]
    assert key["key"] not in json.dumps(listed)  # the raw key is shown once only
    assert listed[0]["status"] == "active" and listed[0]["name"] == "ci"

    granted = run_json("credits", "grant", who, "12", "--note", "bonus", env=pg_env)
    assert granted["credits"] == 112
    shown = run_json("credits", "show", who, env=pg_env)
    assert shown["credits"] == 112
    assert shown["next_expiration"] == {"credits": 100, "expires_at": "2031-01-01T00:00:00.000Z"}

    revoked = run_json("keys", "revoke", key["id"], env=pg_env)
    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    human = run("keys", "list", who, env=pg_env).stdout
    assert "revoked" in human and key["id"] in human
    second = run_json("keys", "create", who, env=pg_env)
    by_raw_key = run_json("keys", "revoke", second["key"], env=pg_env)  # the raw key works too
    assert by_raw_key["id"] == second["id"] and by_raw_key["status"] == "revoked"


def test_global_json_flag_and_human_output(pg_env: dict[str, str]) -> None:
    who = email()
    assert "created user" in run("users", "create", who, env=pg_env).stdout
    shown = json.loads(run("--json", "credits", "show", who, env=pg_env).stdout)
    assert shown["credits"] == 0 and shown["account_type"] == "FREE"
    key_out = run("keys", "create", who, env=pg_env).stdout
    assert "shown once" in key_out and "gih_live_" in key_out


def test_clear_errors_for_operator_mistakes(pg_env: dict[str, str]) -> None:
    who = email()
    run("users", "create", who, env=pg_env)
    dup = run("users", "create", who.upper(), env=pg_env, check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    for args in (["keys", "create", "nobody@example.com"], ["credits", "show", "nobody@x.org"],
                 ["credits", "grant", "nobody@example.com", "5"], ["keys", "list", "no@x.org"]):
        result = run(*args, env=pg_env, check=False)
        assert result.returncode == 1 and "no user with email" in result.stderr, args
    bad_date = run("credits", "grant", who, "5", "--expires-at", "next tuesday", env=pg_env,
                   check=False)
    assert bad_date.returncode == 2 and "ISO 8601" in bad_date.stderr
    past = run("credits", "grant", who, "5", "--expires-at", "2001-01-01", env=pg_env, check=False)
    assert past.returncode == 2 and "in the past" in past.stderr
    bad_amount = run("credits", "grant", who, "0", env=pg_env, check=False)
    assert bad_amount.returncode == 2
    bad_email = run("users", "create", "not-an-email", env=pg_env, check=False)
    assert bad_email.returncode == 2 and "not an email" in bad_email.stderr
    unknown_key = run("keys", "revoke", "key_doesnotexist", env=pg_env, check=False)
    assert unknown_key.returncode == 1 and "no API key" in unknown_key.stderr
    for result in (dup, bad_date, unknown_key):
        assert "Traceback" not in result.stderr


def test_audit_passes_then_fails_on_tampering(pg_env: dict[str, str], pg_url: str) -> None:
    who = email()
    run("users", "create", who, "--credits", "40", env=pg_env)
    assert run_json("credits", "audit", env=pg_env)["ok"] is True
    psql = ["psql", pg_url, "-qc"]
    subprocess.run([*psql, f"UPDATE users SET credits = 45 WHERE email = '{who}'"], check=True)
    try:
        result = run("credits", "audit", env=pg_env, check=False)
        assert result.returncode == 1
        assert who in result.stdout and "balance 45 != ledger 40" in result.stdout
    finally:
        subprocess.run([*psql, f"UPDATE users SET credits = 40 WHERE email = '{who}'"],
                       check=True)
    assert run("credits", "audit", env=pg_env).returncode == 0


def test_production_refuses_a_missing_or_placeholder_secret(pg_url: str) -> None:
    for secret in (None, "changeme", "short"):
        env = clean_env(GIH_DATABASE_URL=pg_url, GIH_PROVIDER="mock")
        if secret:
            env["GIH_SECRET_KEY"] = secret
        result = run("serve", "--port", "1", env=env, check=False)
        assert result.returncode == 2 and "GIH_SECRET_KEY" in result.stderr, result.stderr
        keys = run("keys", "create", "x@example.com", env=env, check=False)
        assert keys.returncode == 2 and "GIH_SECRET_KEY" in keys.stderr


def test_settings_errors_are_named_at_once(pg_url: str) -> None:
    env = clean_env(GIH_DATABASE_URL=pg_url, GIH_STORAGE="s3", GIH_PROVIDER="openai")
    result = run("serve", env=env, check=False)
    assert result.returncode == 2
    for name in ("GIH_SECRET_KEY", "GIH_S3_BUCKET", "OPENAI_API_KEY"):
        assert name in result.stderr
    bad_port = run("serve", env={**env, "GIH_PORT": "notaport"}, check=False)
    assert bad_port.returncode == 2 and "GIH_PORT" in bad_port.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_embedded_default_from_an_empty_folder(tmp_path: Path) -> None:
    """No configuration at all: SQLite under ./data, schema created, a hint, a working API."""
    env = clean_env()
    port = free_port()
    server = subprocess.Popen([GIH, "serve", "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                status, models = get(f"{base}/api/v1/models")
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "gih serve did not start"
                time.sleep(0.2)
        assert status == 200 and models["data"][0]["id"] == "gpt-image-2"
        assert (tmp_path / "data" / "gih.db").exists()

        run("users", "create", "me@example.com", "--credits", "100", env=env, cwd=tmp_path)
        key = run_json("keys", "create", "me@example.com", env=env, cwd=tmp_path)["key"]
        status, balance = get(f"{base}/api/v1/credits", key)
        assert status == 200 and balance["credits"] == 100
        status, error = get(f"{base}/api/v1/credits", "gih_live_" + "Z" * 32)
        assert status == 401 and error["error"]["code"] == "invalidApiKey"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        output = server.communicate(timeout=20)[0]
    assert "gih users create you@example.com" in output and "gih keys create" in output
    assert "embedded mode" in output and "MOCK PROVIDER" in output
