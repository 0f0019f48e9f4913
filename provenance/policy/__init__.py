"""CI policies: load a TOML policy, evaluate it on checkpoints, report findings."""
from provenance.policy.engine import CheckResult, check_paths, evaluate
from provenance.policy.load import Policy, PolicyError, load_policy

__all__ = ["CheckResult", "Policy", "PolicyError", "check_paths", "evaluate", "load_policy"]
