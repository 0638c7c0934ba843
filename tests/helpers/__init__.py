"""Shared helpers for the test suite: the relay as a real process, and independent clients."""
