"""Opt-in automatic containment (CORDON_AUTO_CONTAIN): rules under which a finding's
instance is isolated at once — the network cut only, the `isolate` playbook — with no
click. AWS's Security Incident Response calls the same choice a containment
preference; off by default, as there.

A rule is `SOURCE:MATCH:ACTION`:
- SOURCE: `guardduty` or `securityhub`;
- MATCH: a severity floor (`>=8`, `>7`) on GuardDuty's scale, or a finding-type pattern
  with `*` wildcards (`CryptoCurrency:EC2/*`; GuardDuty's types contain colons, so the
  pattern is everything between the source and the last colon), or `*`;
- ACTION: `isolate` (the only one: a rule never runs more than the network cut; the
  rest of `full` waits for a person's **Keep**).

Never automatic: a sample finding, a finding about anything but an instance, and a
finding whose earlier automatic containment was released — later updates of the same
finding only propose (the re-firing after a rollback that users of AWS's automated
response solution complain about)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

from playbooks.findings import GUARDDUTY, SECURITY_HUB, Proposal

SOURCES = {"guardduty": GUARDDUTY, "securityhub": SECURITY_HUB}
ACTIONS = ("isolate",)
_SEVERITY = re.compile(r"^(>=|>)\s*(\d+(?:\.\d+)?)$")
# Who the decision is recorded as made by (the rule itself is in `auto_rule`).
RULE_DECIDER = "cordon-auto"


@dataclass(frozen=True)
class AutoRule:
    text: str
    source: str          # the Proposal.source it applies to
    action: str          # the playbook it runs
    severity: float | None = None
    strict: bool = False  # `>` rather than `>=`
    pattern: str | None = None

    def matches(self, p: Proposal) -> bool:
        if p.source != self.source or p.kind != "instance" or p.sample:
            return False
        if self.severity is not None:
            if p.severity is None:
                return False
            return p.severity > self.severity if self.strict else p.severity >= self.severity
        return self.pattern == "*" or fnmatch.fnmatchcase(p.type, self.pattern or "")


def parse_rule(text: str) -> AutoRule:
    """One rule; ValueError saying what is wrong."""
    source, _, rest = text.strip().partition(":")
    match, _, action = rest.rpartition(":")
    source, match, action = source.strip().lower(), match.strip(), action.strip().lower()
    if source not in SOURCES:
        raise ValueError(f"{text.strip()!r}: the source must be one of "
                         f"{', '.join(SOURCES)} (e.g. guardduty:>=8:isolate)")
    if action not in ACTIONS:
        raise ValueError(f"{text.strip()!r}: the action must be isolate (the network cut "
                         "only; the rest waits for a person)")
    if not match:
        raise ValueError(f"{text.strip()!r}: say what matches: a severity (>=8) or a finding "
                         "type (CryptoCurrency:EC2/*)")
    severity = _SEVERITY.match(match)
    if severity:
        value = float(severity.group(2))
        if not 0 <= value <= 10:
            raise ValueError(f"{text.strip()!r}: a severity is between 0 and 10")
        return AutoRule(text.strip(), SOURCES[source], action, value,
                        strict=severity.group(1) == ">")
    if match.startswith(("<", ">", "=")):
        raise ValueError(f"{text.strip()!r}: a severity is written >=N or >N")
    return AutoRule(text.strip(), SOURCES[source], action, pattern=match)


def parse_rules(texts: Sequence[str]) -> list[AutoRule]:
    return [parse_rule(t) for t in texts if t.strip()]


def matching_rule(rules: Sequence[AutoRule], p: Proposal) -> AutoRule | None:
    """The first rule that matches the finding."""
    return next((r for r in rules if r.matches(p)), None)
