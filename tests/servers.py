"""A real PostgreSQL and a real `mlflow server --app-name basic-auth` on top of it, for tests.

PostgreSQL comes from Debian's `postgresql` package (`.ci/run` installs it when missing); it
refuses to run as root, so under root it runs as the package's `postgres` user, in a folder of
its own under /tmp, on a free loopback port, with its socket in that folder.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

ADMIN = ("admin", "admin-pw-for-tests")
PROJECT = ("study-worker", "project-pw-for-tests")
MISSING = ("PostgreSQL's initdb and pg_ctl were not found: run .ci/run, which installs them, or "
           "`apt-get install postgresql`")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_program(name: str) -> str:
    """initdb and pg_ctl are not on PATH with Debian's package: it keeps them per version."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                                   reverse=True)), None)
    if found is None:
        pytest.fail(MISSING, pytrace=False)  # never a skip: CI must run these tests
    return found


class PostgreSQL:
    """A throwaway cluster: trust authentication on 127.0.0.1 only, no fsync."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="resnet-exp-pg-"))
        self.port = free_port()
        self.user = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail(f"running as root, and there is no 'postgres' user to run PostgreSQL as: "
                            f"{MISSING}", pytrace=False)
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    def _run(self, *cmd: str) -> None:
        as_user = {"user": self.user.pw_uid, "group": self.user.pw_gid} if self.user else {}
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root, **as_user)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed: {result.stdout[-1500:]}{result.stderr[-1500:]}",
                        pytrace=False)

    def start(self) -> "PostgreSQL":
        data = self.root / "data"
        self._run(postgres_program("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-sync")
        self._run(postgres_program("pg_ctl"), "-D", str(data), "-w", "-t", "60",
                  "-l", str(self.root / "postgres.log"),
                  "-o", f"-p {self.port} -k {self.root} -h 127.0.0.1 -F", "start")
        return self

    def create_database(self, name: str) -> str:
        """A new database; returns its SQLAlchemy URI (psycopg2: see docs/tracking-server.md)."""
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        connection.autocommit = True  # CREATE DATABASE refuses to run in a transaction
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{name}"

    def query(self, database: str, sql: str, *args) -> list[tuple]:
        import psycopg2

        with psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database) as c:
            with c.cursor() as cursor:
                cursor.execute(sql, args)
                return cursor.fetchall()

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            self._run(postgres_program("pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate",
                      "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


class TrackingServer:
    """`mlflow server` with basic auth, its runs and users in PostgreSQL and its artifacts
    proxied into a local folder; start, kill (SIGKILL) and start again on the same port."""

    def __init__(self, root: Path, backend_uri: str, auth_uri: str) -> None:
        self.root, self.backend_uri, self.port = root, backend_uri, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.auth_config = root / "basic_auth.ini"
        self.auth_config.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"  # everyone reads everything; writers get EDIT or own it
            f"database_uri = {auth_uri}\n"
            f"admin_username = {ADMIN[0]}\n"
            f"admin_password = {ADMIN[1]}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # a password check is a PBKDF2 hash: without the cache each request took about 1 s
            "auth_cache_ttl_seconds = 600\n")
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 240) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(self.auth_config),
                   MLFLOW_FLASK_SERVER_SECRET_KEY="tests-only-csrf-key",  # the auth app's CSRF key
                   MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # 5 job workers we do not use
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
               "--artifacts-destination", str(self.root / "artifacts"), "--app-name", "basic-auth",
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        log = open(self.root / f"server-{self.starts}.log", "w")
        self.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # its own group: kill takes all
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"mlflow server exited: {self.log_tail()}", pytrace=False)
            if self.healthy():
                return
            time.sleep(0.2)
        pytest.fail(f"mlflow server not healthy after {timeout} s: {self.log_tail()}", pytrace=False)

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.uri}/health", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def ensure_up(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.start()

    def kill(self) -> None:
        """SIGKILL the server and every process it started: a crash, not a shutdown."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self) -> str:
        return (self.root / f"server-{self.starts - 1}.log").read_text()[-3000:]

    def create_user(self, username: str, password: str) -> None:
        """Through the auth app's REST API, as the admin (what mlflow.server.get_app_client(
        'basic-auth', uri).create_user does, without importing the server's Flask app)."""
        answer = requests.post(f"{self.uri}/api/2.0/mlflow/users/create", auth=ADMIN, timeout=30,
                               json={"username": username, "password": password})
        assert answer.status_code == 200, answer.text
