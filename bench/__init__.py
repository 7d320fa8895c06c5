"""Benchmarks: load generator, server overhead and overload checks (see docs/benchmarks.md)."""
