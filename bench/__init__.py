"""The convserve benchmark harness: `python -m bench` (or `make bench`) writes bench/results.md.

Not a timed test: it starts the real gunicorn server with the production config, drives it with
wrk on loopback and compares what it gets with the two limits of the stack, measured in the
same run (an HTTP route that does no work, and the model's in-process forward throughput).
"""
