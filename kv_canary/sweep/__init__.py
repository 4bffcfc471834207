"""The periodic radix sweep: walk the prefix cache, plan its slots, verify them between forwards."""
