"""Alembic migrations of the store (run by ``sync.store.upgrade``)."""
