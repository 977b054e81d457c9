"""The `gih` command as an operator runs it: a real process, real databases."""

import concurrent.futures
import json
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TEST_SECRET
from tests.fakes.processes import app_env, start_serve, stop_process
from tests.helpers import get, run, run_json


@pytest.fixture
def pg_env(pg_url: str) -> dict[str, str]:
    return app_env({"GIH_DATABASE_URL": pg_url, "GIH_SECRET_KEY": TEST_SECRET,
                    "GIH_PROVIDER": "mock"})


def email() -> str:
    return f"op{secrets.token_hex(5)}@example.com"


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


def run_each(*calls: tuple[list[str], dict[str, str]]) -> list[subprocess.CompletedProcess[str]]:
    """Independent `gih` calls, (arguments, environment) each, a few at a time."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda call: run(*call[0], env=call[1], check=False), calls))


def test_clear_errors_for_operator_mistakes(pg_env: dict[str, str]) -> None:
    who = email()
    run("users", "create", who, env=pg_env)
    no_user = (["keys", "create", "nobody@example.com"], ["credits", "show", "nobody@x.org"],
               ["credits", "grant", "nobody@example.com", "5"], ["keys", "list", "no@x.org"])
    dup, bad_date, past, bad_amount, bad_email, unknown_key, *unknown_users = run_each(*(
        (args, pg_env) for args in (
            ["users", "create", who.upper()],
            ["credits", "grant", who, "5", "--expires-at", "next tuesday"],
            ["credits", "grant", who, "5", "--expires-at", "2001-01-01"],
            ["credits", "grant", who, "0"],
            ["users", "create", "not-an-email"],
            ["keys", "revoke", "key_doesnotexist"],
            *no_user)))
    assert dup.returncode == 1 and "already exists" in dup.stderr
    for args, result in zip(no_user, unknown_users, strict=True):
        assert result.returncode == 1 and "no user with email" in result.stderr, args
    assert bad_date.returncode == 2 and "ISO 8601" in bad_date.stderr
    assert past.returncode == 2 and "in the past" in past.stderr
    assert bad_amount.returncode == 2
    assert bad_email.returncode == 2 and "not an email" in bad_email.stderr
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
    calls = []
    for secret in (None, "changeme", "short"):
        env = app_env({"GIH_DATABASE_URL": pg_url, "GIH_PROVIDER": "mock"})
        if secret:
            env["GIH_SECRET_KEY"] = secret
        calls += [(["serve", "--port", "1"], env), (["keys", "create", "x@example.com"], env)]
    for (args, _), result in zip(calls, run_each(*calls), strict=True):
        assert result.returncode == 2 and "GIH_SECRET_KEY" in result.stderr, (args, result.stderr)


def test_settings_errors_are_named_at_once(pg_url: str) -> None:
    env = app_env({"GIH_DATABASE_URL": pg_url, "GIH_STORAGE": "s3", "GIH_PROVIDER": "openai"})
    result, bad_port = run_each((["serve"], env), (["serve"], {**env, "GIH_PORT": "notaport"}))
    assert result.returncode == 2
    for name in ("GIH_SECRET_KEY", "GIH_S3_BUCKET", "OPENAI_API_KEY"):
        assert name in result.stderr
    assert bad_port.returncode == 2 and "GIH_PORT" in bad_port.stderr


def test_embedded_default_from_an_empty_folder(tmp_path: Path) -> None:
    """No configuration at all: SQLite under ./data, schema created, a hint, a working API."""
    env = app_env({})
    log = tmp_path.parent / f"{tmp_path.name}-serve.log"  # not in the empty folder itself
    server, base = start_serve({}, log, workers=None, cwd=tmp_path, set_base_url=False)
    try:
        status, models = get(f"{base}/api/v1/models")
        assert status == 200 and models["data"][0]["id"] == "gpt-image-2"
        assert (tmp_path / "data" / "gih.db").exists()

        run("users", "create", "me@example.com", "--credits", "100", env=env, cwd=tmp_path)
        key = run_json("keys", "create", "me@example.com", env=env, cwd=tmp_path)["key"]
        status, balance = get(f"{base}/api/v1/credits", key)
        assert status == 200 and balance["credits"] == 100
        status, error = get(f"{base}/api/v1/credits", "gih_live_" + "Z" * 32)
        assert status == 401 and error["error"]["code"] == "invalidApiKey"
    finally:
        stop_process(server, 20)
    output = log.read_text()
    assert "gih users create you@example.com" in output and "gih keys create" in output
    assert "embedded mode" in output and "MOCK PROVIDER" in output


def test_the_worker_runs_on_uvloop() -> None:
    """`gih worker` sets uvloop's policy before arq takes its loop (as uvicorn does for serve)."""
    import asyncio

    import uvloop

    from app.cli.serve import use_uvloop

    before = asyncio.get_event_loop_policy()
    try:
        use_uvloop()
        assert isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)
    finally:
        asyncio.set_event_loop_policy(before)
