"""Reliability tests: bad inputs, kill and resume, determinism, tracking faults."""
