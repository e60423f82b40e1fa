"""Tooling around the jobs: settings, the local stack, the synthetic shopper generator and the CLI."""
