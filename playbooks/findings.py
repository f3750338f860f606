"""Alerts that become proposed containments: EventBridge events — GuardDuty findings,
Security Hub findings (ASFF), and a `cordon:contain` tag put on an instance — read into
what a card needs. Nothing here calls AWS: the events arrive through a queue."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

INSTANCE_ID = re.compile(r"\bi-(?:[0-9a-f]{8}|[0-9a-f]{17})\b")
KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
# An IAM user as a target: its ARN, path left out.
USER_TARGET = re.compile(r"arn:aws(?:-cn|-us-gov|-iso[a-z]?)?:iam::\d{12}:user/[\w+=,.@-]{1,64}")
ROLE_TARGET = re.compile(r"arn:aws(?:-cn|-us-gov|-iso[a-z]?)?:iam::\d{12}:role/[\w+=,.@-]{1,64}")
BUCKET_TARGET = re.compile(r"arn:aws(?:-cn|-us-gov|-iso[a-z]?)?:s3:::[a-z0-9][a-z0-9.-]{1,61}"
                           r"[a-z0-9]")
PLAYBOOK_OF = {"instance": "full", "key": "key", "user": "user", "role": "role",
               "bucket": "bucket"}
# Security Hub's severity labels on GuardDuty's numeric scale.
LABELS = {"INFORMATIONAL": 0.0, "LOW": 1.0, "MEDIUM": 4.0, "HIGH": 7.0, "CRITICAL": 9.0}
CONTAIN_TAG = "cordon:contain"

GUARDDUTY, SECURITY_HUB, TAG = "GuardDuty", "Security Hub", "tag cordon:contain"


class Malformed(ValueError):
    """Not an event Cordon understands; said with why."""


@dataclass(frozen=True)
class Proposal:
    """One resource to propose containing, and the finding behind it."""

    source: str            # GuardDuty | Security Hub | tag cordon:contain
    kind: str              # instance | key
    resource_id: str       # i-… or AKIA…/ASIA…
    playbook: str          # full | key
    finding_id: str        # the finding's id (for a tag change, the event's id)
    title: str
    type: str
    severity: float | None  # GuardDuty's scale; None for a tag change (a person asked)
    severity_label: str
    account: str
    region: str
    first_seen: str
    last_seen: str
    console_url: str
    reason: str
    product: str = ""          # the product that found it (Security Hub's ProductName)
    count: int | None = None   # how many times the finding has been seen (GuardDuty)
    sample: bool = False       # a sample finding (generated to try the pipeline)
    state: str = ""            # why it is closed: archived, SUPPRESSED, RESOLVED…; "" open
    created: str = ""          # when the finding was created, by its own clock

    def facts(self) -> dict[str, Any]:
        return asdict(self)


def severity_label(value: float) -> str:
    if value >= 9:
        return "CRITICAL"
    if value >= 7:
        return "HIGH"
    if value >= 4:
        return "MEDIUM"
    return "LOW" if value >= 1 else "INFORMATIONAL"


def parse_event(body: str) -> list[Proposal]:
    """The proposals an EventBridge event makes (several for a Security Hub batch); []
    for an event of a known kind that names nothing Cordon contains. Malformed for
    anything else."""
    try:
        event = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise Malformed(f"not JSON: {exc}") from exc
    if not isinstance(event, dict) or not isinstance(event.get("detail"), dict):
        raise Malformed("not an EventBridge event (no detail)")
    source, kind = event.get("source"), event.get("detail-type")
    try:
        if source == "aws.guardduty" and kind == "GuardDuty Finding":
            return _guardduty(event)
        if source == "aws.securityhub" and kind == "Security Hub Findings - Imported":
            return _security_hub(event)
        if source == "aws.tag" and kind == "Tag Change on Resource":
            return _tag_change(event)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise Malformed(f"{source} / {kind}: missing or malformed {exc}") from exc
    raise Malformed(f"unknown event {source!r} / {kind!r}")


def _guardduty(event: dict[str, Any]) -> list[Proposal]:
    d = event["detail"]
    resource = d["resource"]
    region = d.get("region") or event.get("region", "")
    if resource["resourceType"] == "Instance":
        kind, rid = "instance", resource["instanceDetails"]["instanceId"]
    elif resource["resourceType"] == "AccessKey":
        details = resource["accessKeyDetails"]
        kind, rid = "key", str(details.get("accessKeyId") or "")
        thief = _exfiltrating_instance(d, details)
        if thief:
            # The instance's role credentials used from elsewhere: contain the instance
            # (its profile goes, and only its own credentials are revoked). Revoking the
            # role would deny every instance sharing it, while this one fetched new ones.
            kind, rid = "instance", thief
        elif details.get("userType") == "AssumedRole" and details.get("userName"):
            # A role's session used where it should not be, no instance named: the role
            # (every session of it issued before the cut) is what to contain.
            kind, rid = "role", principal_arn(
                "role", str(d.get("partition") or "aws"),
                str(d.get("accountId") or event.get("account", "")), str(details["userName"]))
        elif not KEY_ID.fullmatch(rid):
            if details.get("userType") != "IAMUser" or not details.get("userName"):
                return []  # a role's session, the root user…: not (yet) Cordon's to contain
            # An IAM user's finding that names no long-term key (a console sign-in, say):
            # the user is what to contain.
            kind, rid = "user", principal_arn(
                "user", str(d.get("partition") or "aws"),
                str(d.get("accountId") or event.get("account", "")), str(details["userName"]))
    elif resource["resourceType"] == "S3Bucket" and resource.get("s3BucketDetails"):
        # The first bucket named (a finding about an object copy may name two).
        name = str(resource["s3BucketDetails"][0]["name"])
        kind, rid = "bucket", f"arn:{d.get('partition') or 'aws'}:s3:::{name}"
    else:
        return []  # EKS, RDS, Lambda…: not Cordon's to contain
    _check(kind, rid)
    severity = float(d["severity"])
    service = d.get("service") or {}
    count = service.get("count")
    return [Proposal(
        source=GUARDDUTY, kind=kind, resource_id=rid,
        playbook=PLAYBOOK_OF[kind], finding_id=str(d["id"]),
        title=str(d.get("title", "")), type=str(d.get("type", "")), severity=severity,
        severity_label=severity_label(severity),
        account=str(d.get("accountId") or event.get("account", "")), region=region,
        first_seen=str(service.get("eventFirstSeen") or d.get("createdAt", "")),
        last_seen=str(service.get("eventLastSeen") or d.get("updatedAt", "")),
        console_url=(f"https://{region}.console.aws.amazon.com/guardduty/home?region={region}"
                     f"#/findings?macros=current&fId={d['id']}"),
        reason=f"GuardDuty: {d.get('type', '')} — {d.get('title', '')}",
        product="GuardDuty", count=int(count) if count is not None else None,
        sample=_true((service.get("additionalInfo") or {}).get("sample")),
        state="archived" if _true(service.get("archived")) else "",
        created=str(d.get("createdAt", "")),
    )]


def _true(value: Any) -> bool:
    """A boolean as findings carry it (true, or the string "true")."""
    return value is True or str(value).lower() == "true"


def closed_reason(p: Proposal, products: tuple[str, ...]) -> str:
    """Why a finding should make no card ("" when it should): a Security Hub finding from
    a product not in `products` (names as Security Hub's ProductName gives them, compared
    without case), or a finding already archived, suppressed or resolved."""
    if p.source == SECURITY_HUB and p.product.lower() not in {x.lower() for x in products}:
        return f"from {p.product or 'an unnamed product'}, not in CORDON_FINDINGS_PRODUCTS"
    if p.state:
        return f"the finding is {p.state.lower()}"
    return ""


EXFILTRATION = "InstanceCredentialExfiltration"
# An instance role session's principal: the role's unique id, then the instance id.
_ROLE_SESSION_OF_INSTANCE = re.compile(r"^AROA[A-Z0-9]+:(i-(?:[0-9a-f]{8}|[0-9a-f]{17}))$")


def _exfiltrating_instance(detail: dict[str, Any], key: dict[str, Any]) -> str | None:
    """The instance an InstanceCredentialExfiltration finding's credentials were issued
    to (the session's principal is `AROA…:i-…`), or None."""
    if EXFILTRATION not in str(detail.get("type", "")):
        return None
    match = _ROLE_SESSION_OF_INSTANCE.match(str(key.get("principalId", "")))
    return match.group(1) if match else None


def _security_hub(event: dict[str, Any]) -> list[Proposal]:
    out: list[Proposal] = []
    for finding in event["detail"]["findings"]:
        sev = finding.get("Severity") or {}
        label = str(sev.get("Label") or "").upper()
        if label in LABELS:
            severity = LABELS[label]
        elif sev.get("Normalized") is not None:
            severity = float(sev["Normalized"]) / 10
            label = severity_label(severity)
        else:
            raise ValueError("Severity")
        region = str(finding.get("Region") or event.get("region", ""))
        product = _product(finding)
        workflow = str((finding.get("Workflow") or {}).get("Status")
                       or finding.get("WorkflowState") or "").upper()
        state = ("ARCHIVED" if str(finding.get("RecordState", "")).upper() == "ARCHIVED"
                 else workflow if workflow in ("SUPPRESSED", "RESOLVED") else "")
        fields = finding.get("ProductFields") or {}
        count = fields.get("aws/guardduty/service/count")
        for resource in finding.get("Resources", []):
            if resource.get("Type") == "AwsEc2Instance":
                match = INSTANCE_ID.search(str(resource["Id"]))
                kind = "instance"
            elif resource.get("Type") == "AwsS3Bucket":
                kind = "bucket"
                match = BUCKET_TARGET.search(str(resource["Id"]))
            elif resource.get("Type") in ("AwsIamUser", "AwsIamRole"):
                kind = "user" if resource["Type"] == "AwsIamUser" else "role"
                match = (USER_TARGET if kind == "user" else ROLE_TARGET).search(
                    re.sub(rf":{kind}/.*/", f":{kind}/", str(resource["Id"])))
            elif resource.get("Type") == "AwsIamAccessKey":
                details = (resource.get("Details") or {}).get("AwsIamAccessKey") or {}
                match = KEY_ID.search(str(details.get("AccessKeyId") or resource["Id"]))
                kind = "key"
            else:
                continue
            if match is None:
                raise ValueError(f"Resources[].Id {resource.get('Id')!r}")
            types = finding.get("Types") or []
            out.append(Proposal(
                source=SECURITY_HUB, kind=kind, resource_id=match.group(0),
                playbook=PLAYBOOK_OF[kind],
                finding_id=_finding_id(finding, product), title=str(finding.get("Title", "")),
                type=str(types[0] if types else finding.get("GeneratorId", "")),
                severity=severity, severity_label=label,
                account=str(finding.get("AwsAccountId") or event.get("account", "")),
                region=str(resource.get("Region") or region),
                first_seen=str(finding.get("FirstObservedAt") or finding.get("CreatedAt", "")),
                last_seen=str(finding.get("LastObservedAt") or finding.get("UpdatedAt", "")),
                console_url=(f"https://{region}.console.aws.amazon.com/securityhub/home?"
                             f"region={region}#/findings?search=Id%3D%255Coperator%255C"
                             f"%253AEQUALS%255C%253A{finding['Id']}"),
                reason=f"Security Hub: {finding.get('Title', '')}",
                product=product, count=int(str(count)) if str(count or "").isdigit() else None,
                sample=_true(finding.get("Sample")), state=state,
                created=str(finding.get("CreatedAt", "")),
            ))
    return out


def _product(finding: dict[str, Any]) -> str:
    """The product behind a Security Hub finding: its ProductName, else the last part of
    its ProductArn (`…:product/aws/guardduty` → guardduty)."""
    name = finding.get("ProductName") or (finding.get("ProductFields") or {}).get(
        "aws/securityhub/ProductName")
    if name:
        return str(name)
    return str(finding.get("ProductArn", "")).rsplit("/", 1)[-1]


def _finding_id(finding: dict[str, Any], product: str) -> str:
    """A GuardDuty finding forwarded by Security Hub is the GuardDuty finding (its id the
    last part of `…:detector/…/finding/<id>`): one finding, however it arrives."""
    fid = str(finding["Id"])
    if product.lower() == "guardduty" and "/finding/" in fid:
        return fid.rsplit("/finding/", 1)[1]
    return fid


def _tag_change(event: dict[str, Any]) -> list[Proposal]:
    d = event["detail"]
    if CONTAIN_TAG not in (d.get("changed-tag-keys") or []):
        return []
    value = (d.get("tags") or {}).get(CONTAIN_TAG)
    if value is None:
        return []  # the tag was removed: nobody asks
    if d.get("service") not in (None, "ec2") or d.get("resource-type") not in (None, "instance"):
        return []
    out = []
    for arn in event.get("resources") or []:
        match = INSTANCE_ID.search(str(arn))
        if match is None:
            continue
        region = str(event.get("region", ""))
        out.append(Proposal(
            source=TAG, kind="instance", resource_id=match.group(0), playbook="full",
            finding_id=str(event.get("id", "")), title=f"{CONTAIN_TAG} set on the instance",
            type="Tag Change on Resource", severity=None, severity_label="—",
            account=str(event.get("account", "")), region=region,
            first_seen=str(event.get("time", "")), last_seen=str(event.get("time", "")),
            console_url=(f"https://{region}.console.aws.amazon.com/ec2/home?region={region}"
                         f"#InstanceDetails:instanceId={match.group(0)}"),
            reason=str(value)[:500] or f"{CONTAIN_TAG} tag set",
            created=str(event.get("time", "")),
        ))
    return out


def principal_arn(kind: str, partition: str, account: str, name: str) -> str:
    """How a user or role is named as a target: its ARN without the path."""
    return f"arn:{partition}:iam::{account}:{kind}/{name}"


def _check(kind: str, rid: str) -> None:
    pattern = {"instance": INSTANCE_ID, "key": KEY_ID, "user": USER_TARGET,
               "role": ROLE_TARGET, "bucket": BUCKET_TARGET}[kind]
    if not pattern.fullmatch(str(rid)):
        raise ValueError(f"resource id {rid!r}")
