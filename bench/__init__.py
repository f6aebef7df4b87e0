"""Benchmarks of kvmnetd against plain pyroute2 baselines, each in throwaway kvt-* namespaces.

Run one with `.venv/bin/python -m bench.<name>` (`make bench` runs `bench.taps`); figures are
printed as a table and written as JSON under bench/results/ (git-ignored).
"""
