"""A read-only store can be read by `status`, `report` and `export`; a new SQLite store is private.

The read-only case uses a real read-only mechanism that holds for root too: the
store's directory bind-mounted read-only in a mount namespace of its own
(``unshare -m``), so any write fails with EROFS; and a trace of every SQL
statement those commands send, which must hold no write.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sales_velocity.scheduler import main
from sales_velocity.sync.store import make_engine

SEED = Path(__file__).resolve().parents[1] / "fixtures" / "csv" / "seed_example.csv"
NOW = dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC)
WRITES = ("INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "REPLACE", "BEGIN IMMEDIATE",
          "PRAGMA JOURNAL_MODE")


def seed_store(tmp_path: Path, store: Path) -> Path:
    """The seed CSV synced into a SQLite store at ``store``; returns the config."""
    shutil.copy(SEED, tmp_path / "seed.csv")
    config = tmp_path / "velocity.toml"
    config.write_text(f'timezone = "UTC"\ncurrency = "NOK"\n[store]\nurl = "sqlite:///{store}"\n'
                      '[[sources]]\nname = "seed"\nkind = "csv"\npath = "seed.csv"\n', encoding="utf-8")
    out = io.StringIO()
    assert main(["--config", str(config), "sync"], env={}, out=out, now=lambda: NOW) == 0, out.getvalue()
    return config


def _mount_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _mount_namespaces(), reason="needs root and `unshare -m` for a read-only bind mount")
def test_status_report_export_read_a_store_on_a_read_only_mount(tmp_path: Path) -> None:
    """The store's directory mounted read-only: status, report and export work; sync fails in one line."""
    folder = tmp_path / "store"
    folder.mkdir()
    db = folder / "velocity.db"
    config = seed_store(tmp_path, db)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    cli = f"{shlex.quote(sys.executable)} -m sales_velocity.scheduler --config {shlex.quote(str(config))}"
    script = [f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} || exit 98",
              f"touch {folder}/probe 2>/dev/null && exit 99"]  # the mount must refuse writes, even root's
    for command in ("status", "report --as-of 2026-11-26", "export", "sync"):
        name = command.split()[0]
        script.append(f"{cli} {command} >{tmp_path}/{name}.out 2>{tmp_path}/{name}.err; "
                      f"echo $? >{tmp_path}/{name}.rc")
    done = subprocess.run(["unshare", "-m", "sh", "-c", "; ".join(script)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode not in (98, 99), f"no read-only mount: {done.stderr}"

    def result(name: str) -> tuple[int, str, str]:
        return (int((tmp_path / f"{name}.rc").read_text()), (tmp_path / f"{name}.out").read_text(),
                (tmp_path / f"{name}.err").read_text())

    code, out, err = result("status")
    assert code == 0, err
    assert "seed  ok" in out
    code, out, err = result("report")
    assert code == 0, err
    assert "11,111" in out  # the seed: 100 open * 50 000 * 0.20 / 90 days
    code, out, err = result("export")
    assert code == 0, err
    assert len(out.splitlines()) == 1 + 150  # header and the seed's 150 deals
    code, out, err = result("sync")
    assert code == 1, out + err
    assert "Traceback" not in err
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in folder.iterdir()) == ["velocity.db"]


def test_read_only_commands_send_no_write(tmp_path: Path) -> None:
    """Every SQL statement status, report and export send to SQLite is a read (traced on the connection)."""
    config = seed_store(tmp_path, tmp_path / "velocity.db")
    statements: list[str] = []

    def trace(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.set_trace_callback(statements.append)

    sa.event.listen(sa.Engine, "connect", trace)
    try:
        for command in (["status"], ["report", "--as-of", "2026-11-26"], ["export"]):
            out = io.StringIO()
            assert main(["--config", str(config), *command], env={}, out=out, now=lambda: NOW) == 0
    finally:
        sa.event.remove(sa.Engine, "connect", trace)
    assert len(statements) > 10
    writes = [s for s in statements if s.lstrip().upper().startswith(WRITES)]
    assert not writes, writes


def test_a_new_sqlite_store_and_its_folders_are_private(tmp_path: Path) -> None:
    """`init` on a new path: folders it creates 0700, the file 0600, its WAL and SHM 0600 too."""
    db = tmp_path / "new" / "deeper" / "velocity.db"
    config = tmp_path / "velocity.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{db}"\n', encoding="utf-8")
    previous = os.umask(0o022)  # the usual umask: without care, everything is world-readable
    try:
        out = io.StringIO()
        assert main(["--config", str(config), "init"], env={}, out=out) == 0
        engine = make_engine(f"sqlite:///{db}")
        with engine.connect() as conn:  # an open connection keeps the WAL and SHM files
            conn.exec_driver_sql("CREATE TABLE probe (x INTEGER)")
            conn.commit()
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in db.parent.iterdir()}
        engine.dispose()
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert modes == {"velocity.db": 0o600, "velocity.db-wal": 0o600, "velocity.db-shm": 0o600}
