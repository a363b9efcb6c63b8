"""The vocabulary of the diagnosis: causes, what each does to the verdict, findings.

A cause's role lives here, beside the cause itself, so that adding a cause touches the
diagnosis and its tests only: the policy and the check read ``Finding.role``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Cause = Literal[
    "truncation_mismatch",
    "normalization_mismatch",
    "prefix_mismatch",
    "pooling_mismatch",
    "quantization_noise",
    "different_space",
    "dimension_mismatch",
    "mixed_store",
    "projection_mismatch",
    "nan_output",
    "zero_vectors",
    "collisions",
    "nondeterministic",
    "batch_inconsistent",
    "recall_loss",
]
Role = Literal["broken_candidate", "other_space", "blocks_approval", "supports_reindex", "note"]
"""What a finding does to the verdict (guard.core.policy reads only this, never a cause):

    broken_candidate  the candidate itself is broken: ``reject_candidate``
    other_space       another space or size: no setting helps, so ``reindex`` unless a
                      fitted linear bridge explains it (guard.checking.bridge tries one)
    blocks_approval   vetoes an approval, whatever the bound says
    supports_reindex  listed among the reasons of a re-index; blocks nothing alone
    note              reported only; a finding whose ``setting`` explains every
                      mismatch turns the verdict into ``fix_config`` whatever its role
"""
ROLES: Mapping[Cause, Role] = {
    "truncation_mismatch": "note",
    "normalization_mismatch": "blocks_approval",
    "prefix_mismatch": "note",
    "pooling_mismatch": "note",
    "quantization_noise": "note",
    "different_space": "other_space",
    "dimension_mismatch": "other_space",
    "mixed_store": "supports_reindex",
    "projection_mismatch": "note",
    "nan_output": "broken_candidate",
    "zero_vectors": "broken_candidate",
    "collisions": "broken_candidate",
    "nondeterministic": "broken_candidate",
    "batch_inconsistent": "broken_candidate",
    "recall_loss": "blocks_approval",
}
SettingValue = str | int | float | bool
Setting = Mapping[str, SettingValue]


@dataclass(frozen=True)
class Finding:
    """One diagnosed cause: what was seen, what to do, and what setting does it.

    ``explains_all`` is true when applying ``setting`` brings every mismatching record
    above the threshold (measured through an ``Alternative``, or implied by the data,
    as with a clean truncation pattern or unit-norm stored vectors). ``role`` is what
    the finding does to the verdict; left out, it is the cause's (``ROLES``).
    """

    cause: Cause
    evidence: str
    suggestion: str
    setting: Setting | None = field(default=None, hash=False)
    explains_all: bool = False
    role: Role | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.role is None:
            object.__setattr__(self, "role", ROLES[self.cause])

    @property
    def fixes_by_setting(self) -> bool:
        """A setting of the candidate's brings every mismatching record above T."""
        return self.setting is not None and self.explains_all

    @property
    def reason(self) -> str:
        """The finding as one reason of a verdict."""
        return f"{self.cause}: {self.evidence}"

    def as_dict(self) -> dict[str, str]:
        """The report's form: exactly cause, evidence and suggestion."""
        return {"cause": self.cause, "evidence": self.evidence, "suggestion": self.suggestion}
