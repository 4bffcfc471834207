"""Several ranks of one engine: processes joined by torch.distributed, each with its shard of the KV
pool and its own canary, driven by rank 0's scheduler (docs/ARCHITECTURE.md, "Ranks").

* ``messages``: what rank 0 sends the other ranks (a forward's plan, a job, stop);
* ``process_group``: joining the group, the control channel, the tensor and pipeline links;
* ``launcher``: rank 0's side: spawn the other ranks, send them each forward, stop them;
* ``worker``: the other ranks' loop (``python -m mock_models.engine.ranks.worker``);
* ``jobs``: what rank 0 asks every rank to do between forwards (drain its canary).
"""
