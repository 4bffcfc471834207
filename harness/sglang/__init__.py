"""The harness's live SGLang target: a real SGLang 0.5.23 server with the canary installed through
its plugin, driven over SGLang's HTTP API, with faults injected inside its scheduler process.

* ``model_configs``: the tiny dummy-weight models the server runs (mha: Llama; swa: Mellum);
* ``server``: the server command, environment and readiness for one (engine settings, mode);
* ``client``: generation through SGLang's ``/generate``, the rest through the injector;
* ``target``: the two together, as the runner's ``EngineTarget``;
* ``injector_entry_point``: the fault injector's plugin entry point, given to each server it starts.

The fault injector itself, inside the scheduler process, is ``sglang_faults/`` (a test tool).
"""
