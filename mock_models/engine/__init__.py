"""The serving engine: request pool, slot allocators, KV pools, radix cache, scheduler, runner."""
