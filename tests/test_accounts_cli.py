"""`gih users` for accounts, as an operator runs it (a real process, PostgreSQL): create with a
password and the admin role, set-password (stdin, and asked at a terminal), set-role, disable and
enable; and what each does to sign-in, sessions and keys."""

import secrets
import subprocess

import pytest

from tests.conftest import TEST_SECRET, make_settings, running_client
from tests.console_helpers import Browser
from tests.fakes.processes import GIH, app_env
from tests.helpers import run, run_json


@pytest.fixture
def pg_env(pg_url: str) -> dict[str, str]:
    return app_env({"GIH_DATABASE_URL": pg_url, "GIH_SECRET_KEY": TEST_SECRET,
                    "GIH_PROVIDER": "mock"})


def stdin_run(*args: str, env: dict[str, str], stdin: str,
              check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([GIH, *args], env=env, input=stdin, capture_output=True, text=True,
                          timeout=60)
    if check:
        assert done.returncode == 0, done.stderr
    return done


async def test_an_operator_manages_accounts(pg_env: dict[str, str], pg_url: str) -> None:
    admin = f"admin{secrets.token_hex(4)}@example.com"
    made = stdin_run("users", "create", admin, "--admin", "--password-stdin", "--json",
                     env=pg_env, stdin="first password 1\n")
    assert '"role": "admin"' in made.stdout and '"has_password": true' in made.stdout
    plain = f"plain{secrets.token_hex(4)}@example.com"
    created = run("users", "create", plain, env=pg_env).stdout
    assert "gih users set-password" in created  # no password yet: it says how to set one
    short = stdin_run("users", "set-password", plain, "--password-stdin", env=pg_env,
                      stdin="too short\n", check=False)
    assert short.returncode == 2 and "at least 10 characters" in short.stderr

    async with running_client(make_settings(pg_url)) as client, Browser(client.app) as browser:
        assert (await browser.sign_in(plain, "no password set")).status_code == 401
        assert (await browser.sign_in(admin, "first password 1")).status_code == 303
        assert (await browser.get("/admin/users")).status_code == 200
        # A new password ends the admin's sessions.
        stdin_run("users", "set-password", admin, "--password-stdin", env=pg_env,
                  stdin="second password 2\n")
        assert (await browser.get("/admin/users")).status_code == 303
        assert (await browser.sign_in(admin, "first password 1")).status_code == 401
        assert (await browser.sign_in(admin, "second password 2")).status_code == 303
        assert run_json("users", "set-role", admin, "user", env=pg_env)["role"] == "user"
        assert (await browser.get("/admin/users")).status_code == 403
        run("users", "set-role", admin, "ADMIN", env=pg_env)
        assert (await browser.get("/admin/users")).status_code == 200

        key = run_json("keys", "create", admin, env=pg_env)["key"]
        headers = {"Authorization": f"Bearer {key}"}
        assert (await client.http.get("/api/v1/credits", headers=headers)).status_code == 200
        disabled = run_json("users", "disable", admin, env=pg_env)
        assert disabled["disabled_at"]
        assert (await browser.get("/admin/users")).status_code == 303
        assert (await client.http.get("/api/v1/credits", headers=headers)).status_code == 401
        assert (await browser.sign_in(admin, "second password 2")).status_code == 401
        assert run_json("users", "enable", admin, env=pg_env)["disabled_at"] is None
        assert (await client.http.get("/api/v1/credits", headers=headers)).status_code == 200
        assert (await browser.sign_in(admin, "second password 2")).status_code == 303


def test_set_password_asks_twice_at_a_terminal(pg_env: dict[str, str]) -> None:
    who = f"tty{secrets.token_hex(4)}@example.com"
    run("users", "create", who, env=pg_env)
    # typer's prompt reads the answers from stdin when it is not a terminal, as a person types
    # them: twice, and they must match.
    mismatch = stdin_run("users", "set-password", who, env=pg_env,
                         stdin="typed password 1\ntyped password 2\n", check=False)
    assert mismatch.returncode != 0
    same = stdin_run("users", "set-password", who, "--json", env=pg_env,
                     stdin="typed password 1\ntyped password 1\n")
    assert '"has_password": true' in same.stdout
    for args in (["users", "set-role", "nobody@example.com", "admin"],
                 ["users", "disable", "nobody@example.com"]):
        result = run(*args, env=pg_env, check=False)
        assert result.returncode == 1 and "no user with email" in result.stderr
    bad_role = run("users", "set-role", who, "owner", env=pg_env, check=False)
    assert bad_role.returncode == 2
