"""A fault injector inside a live SGLang server's scheduler process: a test tool that corrupts the
server's memory on purpose, so the harness can show the canary catching it.

It exists only when a test run enables it. No installed distribution declares its
``sglang.srt.plugins`` entry point: the harness gives each test server one
(harness/sglang/injector_entry_point.py), and even then ``plugin.register`` does nothing unless
``KV_CANARY_FAULT_INJECTOR_PORT`` and ``KV_CANARY_FAULT_INJECTOR_TOKEN`` are set (``settings``). It
then listens on 127.0.0.1 only and answers only requests that carry the run's token
(``http_api``). The canary's runtime (``kv_canary/``) never imports it. It reuses the mock
engine's fault machinery (``mock_models.faults``: the contract's ``Fault`` resolved for a mode,
triggers, injection log); it is a package of its own because the harness must not import the mock engine.

* ``settings``: the two variables, checked;
* ``http_api``: the loopback HTTP server, its refusals, its routes (the mock server's shapes);
* ``scheduler_tasks``: work the HTTP thread hands to the scheduler thread;
* ``fault_schedule``: scheduled faults, their triggers, retries and the injection log;
* ``live_targets`` / ``live_faults``: what a fault lands on in SGLang's objects, and the faults;
* ``plugin``: the entry point and the scheduler hooks.
"""
