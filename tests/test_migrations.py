"""Schema changes reach existing databases: Alembic migrations, run at start under a
lock, on both databases; the models and the migrations never drift apart."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from playbooks.database import make_engine
from playbooks.models import Base
from playbooks.store import Store


def _config(conn: object) -> Config:
    config = Config()
    config.set_main_option("script_location", "playbooks:migrations")
    config.attributes["connection"] = conn
    return config


def _baseline(url: str, with_version: bool) -> None:
    """A database as the version before migrations made it, with a few rows."""
    engine = make_engine(url)
    with engine.connect() as conn:
        command.upgrade(_config(conn), "0001")
        if not with_version:  # made by create_all: no alembic_version at all
            conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text(
            "INSERT INTO incidents (id, kind, target_id, region, account, playbook, reason, "
            "requester, channel_id, status, facts, created_at, expires_at, summary, "
            "approvals_required, options) VALUES ('CRD-OLD001', 'instance', 'i-0abc', "
            "'us-east-1', '', 'full', 'old', 'U1', 'C1', 'contained', '{}', "
            "'2026-11-01 10:00:00', '2026-11-01 10:30:00', 'done', 1, '{}')"))
        conn.execute(text("INSERT INTO decisions (incident_id, user_id, action, outcome, at) "
                          "VALUES ('CRD-OLD001', 'U2', 'approve', 'accepted', "
                          "'2026-11-01 10:01:00')"))
        conn.commit()
    engine.dispose()


def test_a_baseline_database_is_upgraded_and_keeps_its_rows(database_url: str) -> None:
    _baseline(database_url, with_version=True)
    store = Store.from_url(database_url)
    try:
        old = store.get("CRD-OLD001")
        assert old is not None and old.status == "contained" and old.summary == "done"
        assert [d.user_id for d in store.decisions("CRD-OLD001")] == ["U2"]
        assert "revocations" in inspect(store.engine).get_table_names()
        assert store.revocations("CRD-OLD001") == []
        assert store.health()[0]
        indexes = {i["name"] for t in ("incidents", "steps", "outbox")
                   for i in inspect(store.engine).get_indexes(t)}
        assert {"ix_incidents_created_at", "ix_steps_name_status", "ix_outbox_unsent"} <= indexes
        columns = {c["name"] for c in inspect(store.engine).get_columns("outbox")}
        assert "claimed_by" in columns
    finally:
        store.engine.dispose()


def test_a_database_made_before_migrations_is_taken_as_the_baseline(database_url: str
                                                                      ) -> None:
    _baseline(database_url, with_version=False)
    store = Store.from_url(database_url)
    try:
        assert store.get("CRD-OLD001") is not None
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() \
                == "0006"
    finally:
        store.engine.dispose()


def test_replicas_starting_together_migrate_once(database_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: Store.from_url(database_url), range(4)))
    with stores[0].engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    for store in stores:
        store.engine.dispose()


def test_the_models_and_the_migrations_agree(database_url: str) -> None:
    store = Store.from_url(database_url)
    try:
        with store.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        store.engine.dispose()
