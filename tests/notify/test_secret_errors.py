"""Errors are stored and printed without secrets (issue 14, item 7: the store part)."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from sales_velocity.notify.outbox import clean_error
from sales_velocity.sync.store import make_engine
from tests.notify.factory import AS_OF, NOW

TOKEN = "xoxbSECRET0token0123456789"
BAD_URL = f"https://hooks.slack.com:99999/services/T000/B000/{TOKEN}"


def every_text_in(engine) -> str:
    """Every value of every table in the store, as one string."""
    parts = []
    with engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):  # noqa: S608 - table names from the store
                parts += [str(v) for v in row]
    return "\n".join(parts)


def test_unparseable_slack_url_reaches_no_store_output_or_log(tmp_path, seeded_file, capsys):
    """A Slack URL that cannot be parsed fails the send; its token is not in the store, status or logs."""
    from tests.test_cli import velocity

    config = seeded_file(f"""
[[notify.channels]]
kind = "slack"
name = "team"
webhook_url = "{BAD_URL}"
max_attempts = 1
""")
    code, out = velocity(["--config", str(config), "notify", "--as-of", AS_OF.isoformat()],
                         now=NOW + dt.timedelta(minutes=1))
    status_code, status = velocity(["--config", str(config), "status"], now=NOW + dt.timedelta(minutes=2))
    logs = capsys.readouterr()
    assert code == 1, out
    assert "FAILED to send digest:2026-11-26" in out
    assert status_code == 0
    assert "last error" in status
    engine = make_engine(f"sqlite:///{tmp_path / 'velocity.db'}")
    stored = every_text_in(engine)
    engine.dispose()
    for where in (out, status, logs.out, logs.err, stored):
        assert TOKEN not in where
        assert "/services/T000" not in where
    assert "cannot be used" in stored


def test_clean_error_masks_secrets_and_url_paths():
    """Known secrets are masked and any URL is cut to scheme and host, even a fragment of one."""
    text = f"boom at https://user:pw@hooks.slack.com:99999/services/T0/B0/{TOKEN}?x=1 and token=abc123"
    cleaned = clean_error(text, lambda s: s.replace("abc123", "***"))
    assert TOKEN not in cleaned
    assert "pw" not in cleaned
    assert "abc123" not in cleaned
    assert "https://hooks.slack.com:99999/…" in cleaned
    assert len(clean_error("x" * 10_000)) == 500
