from tests.unit.contract.verdicts import inject_clients

__all__ = ["inject_clients"]
