"""The pieces of `benchmarks/run.py`: processes, wrk, fixtures, servers, reports, profiles."""
