"""EAGLE-style speculative decoding in the mock engine (``EngineConfig.speculative_num_steps``).

A draft worker proposes a chain of draft tokens for each decoding request; the target model's
TARGET_VERIFY forward writes the request's window (its last sampled token, then the drafts) into
the KV cache at positions ``[kv_len, kv_len + window)``; the token oracle, standing in for the
target's LM head, accepts the longest matching run; the rejected positions are rolled back (their
SWA slots released, their whole pages freed). The canary guards the target's pools only: the
draft worker has no KV of its own and nothing to install.
"""

from mock_models.engine.speculative.engine import SpeculativeEngine

__all__ = ["SpeculativeEngine"]
