"""The token oracle the engine samples with. It is part of the contract (``kv_canary_contract.token_oracle``):
the harness checks every output against it; re-exported here, where the engine has always found it."""

from kv_canary_contract.token_oracle import OracleState, TokenOracle

__all__ = ["OracleState", "TokenOracle"]
