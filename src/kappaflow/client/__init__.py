"""Clients of a running stack: load at a target rate, replay of recorded events, and the
harness the apps' demos run in."""
