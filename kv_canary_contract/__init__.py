"""The contract between kv-canary's parts: what a fault, an engine setting and a mode are, and the
rules that say whether a fault or a setting can be used.

The scenario validator (``kv-canary validate``), the mock server (``POST /kv_canary/inject``, its
flags, its engine config) and any other engine-side fault injector import it, so that what one
accepts the others accept too, with the same reasons. It depends on pydantic only.

* ``modes``: the model modes and what each KV layout holds;
* ``fault_kinds``: the fault kinds, their target keys and values, what each needs (one entry a kind);
* ``fault``: the fault mapping / inject body (pydantic); ``fault_rules``: its checks, target defaults;
* ``engine_settings``: the engine settings (pydantic), their flags, the engine's start-up rules;
* ``engine_bugs``: the engine bug modes (named re-enactments of public bug reports) and their rules;
* ``injections``: the statuses of an injection; ``bounds``: the numeric bounds;
* ``token_oracle``: the tokens the mock engine must generate, which the harness checks outputs against.

docs/DESIGN.md is the prose of this contract.
"""

from kv_canary_contract.bounds import (
    MAX_FORWARDS,
    MAX_PAGE_SIZE,
    MAX_RANKS,
    MAX_REQUESTS,
    MAX_SPECULATIVE_STEPS,
    MAX_TOKENS,
    SEED_MAX,
    SEED_MIN,
)
from kv_canary_contract.engine_bugs import (
    ENGINE_BUG_NAMES,
    ENGINE_BUGS,
    EngineBug,
    SettingNeed,
    bug_problems,
    engine_bug,
)
from kv_canary_contract.engine_settings import (
    CANARY_SETTINGS,
    FEATURE_SETTINGS,
    EngineSettings,
    engine_setting_problems,
    feature_enabled,
    rank_count,
    setting_argument,
    setting_bounds,
    setting_choices,
    setting_flag,
)
from kv_canary_contract.fault import TRIGGERS, Fault, FaultTarget
from kv_canary_contract.fault_kinds import (
    FAULT_KIND_RULES,
    FAULT_KINDS,
    TARGET_VALUES,
    FaultKind,
    FaultKindRule,
    fault_kinds_in_mode,
)
from kv_canary_contract.fault_rules import ResolvedTarget, fault_problems, resolve_target
from kv_canary_contract.injections import INJECTION_STATUSES, InjectionStatus
from kv_canary_contract.modes import MODEL_MODES, MODES, ModeFacts, ModelMode, PoolGroup, model_mode
from kv_canary_contract.problems import ContractModel, ContractProblem, Location
from kv_canary_contract.token_oracle import OracleState, TokenOracle

__all__ = [
    "CANARY_SETTINGS",
    "ENGINE_BUGS",
    "ENGINE_BUG_NAMES",
    "FAULT_KINDS",
    "FAULT_KIND_RULES",
    "FEATURE_SETTINGS",
    "INJECTION_STATUSES",
    "MAX_FORWARDS",
    "MAX_PAGE_SIZE",
    "MAX_RANKS",
    "MAX_REQUESTS",
    "MAX_SPECULATIVE_STEPS",
    "MAX_TOKENS",
    "MODEL_MODES",
    "MODES",
    "SEED_MAX",
    "SEED_MIN",
    "TARGET_VALUES",
    "TRIGGERS",
    "ContractModel",
    "ContractProblem",
    "EngineBug",
    "EngineSettings",
    "Fault",
    "FaultKind",
    "FaultKindRule",
    "FaultTarget",
    "InjectionStatus",
    "Location",
    "ModeFacts",
    "ModelMode",
    "OracleState",
    "PoolGroup",
    "ResolvedTarget",
    "SettingNeed",
    "TokenOracle",
    "bug_problems",
    "engine_bug",
    "engine_setting_problems",
    "fault_kinds_in_mode",
    "fault_problems",
    "feature_enabled",
    "model_mode",
    "rank_count",
    "resolve_target",
    "setting_argument",
    "setting_bounds",
    "setting_choices",
    "setting_flag",
]
