"""Entry points that install the canary into a specific serving engine."""
