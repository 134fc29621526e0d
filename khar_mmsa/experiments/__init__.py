"""Experiments built on the runner: sweeps of many runs (:mod:`.sweep`, local or on a Ray cluster)
and the text-only floor the benchmarks compare KHaR with (:mod:`.textonly`)."""
