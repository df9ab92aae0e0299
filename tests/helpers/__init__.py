"""Helpers the tests (and the coverage bench) share; no test module imports another."""
