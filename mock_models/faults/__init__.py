"""Fault injection inside the mock server: corrupt the engine's state on purpose, between forwards,
so the harness can prove the KV canary catches every kind of corruption (docs/FAULTS.md).

* ``fault_request``: the ``/kv_canary/inject`` body (``kv_canary_contract.Fault``) judged for this
  engine by the contract's rules (400), target defaults;
* ``triggers``: when an application is due (``at_step``, ``after_warmup_steps``, ``probability``);
* ``targets``: what a fault lands on (live slots, cached unused slots, last-forward slots, nodes);
* one module per fault family: ``kv_bytes``, ``canary_records``, ``slot_maps``, ``double_free``,
  ``radix_faults``, ``token_swap``;
* ``injection_log``: the injections list and the ``kv_canary_fault`` log line;
* ``injector``: the step hook that applies due faults, retries them, records them.

The HTTP routes that drive it are the server's (``mock_models/server/fault_routes.py``): this
package knows the engine, never the web server.
"""

from mock_models.faults.injector import FaultInjector

__all__ = ["FaultInjector"]
