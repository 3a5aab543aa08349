"""Velocity metrics: levers, snapshots, hygiene rules, stage times and reports."""
