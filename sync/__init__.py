"""The local store and the sync engine."""
