"""What the CLI and the wiring ask of AWS outside any incident: the client pool, the
isolation groups made ahead (`prepare`), the checks of `preflight`, the IAM policy and
the accounts setting. bot/ reaches handlers/ only through playbooks/: these are that
way in, apart from the flows of an incident (playbooks.service)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from handlers.attribution import acting_as
from handlers.aws import ClientPool
from handlers.pacing import Limit, Pacer, parse_limits
from handlers.retry import describe_error


def client_pool(session_factory: Callable[[], Any] | None = None,
                accounts: dict[str, str] | None = None,
                ec2_buckets: dict[str, Limit] | None = None,
                on_throttle: Callable[[str], None] | None = None) -> ClientPool:
    """AWS clients for the bot; `session_factory` lets a caller wrap the boto3 session
    (the benchmarks inject latency this way); `ec2_buckets`: EC2's request buckets, paced
    on Cordon's side (None: not paced); `on_throttle(action)`: each throttling answer."""
    pacer = Pacer(ec2_buckets) if ec2_buckets is not None else None
    if session_factory:
        return ClientPool(session_factory, accounts, pacer, on_throttle)
    return ClientPool(accounts=accounts, pacer=pacer, on_throttle=on_throttle)


def aws_regions() -> frozenset[str]:
    """The names of AWS's regions (every partition)."""
    from handlers.aws import known_regions

    return known_regions()


def parse_ec2_buckets(text: str) -> dict[str, Limit]:
    """CORDON_EC2_BUCKETS → the limits that differ from AWS's defaults."""
    return parse_limits(text)


def prepare_isolation(pool: ClientPool, regions: Sequence[str],
                      vpc_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Create every VPC's isolation groups ahead of an incident."""
    from handlers.isolation import prepare_vpcs
    from playbooks.errors import AwsLookupFailed

    results = []
    with acting_as("prepare"):
        for region in regions:
            try:
                rows = prepare_vpcs(pool.for_region(region), vpc_ids)
            except Exception as exc:  # no credentials, no network, no permission
                raise AwsLookupFailed(f"{region}: {describe_error(exc)}") from exc
            results += [{"region": region, **row} for row in rows]
    return results


def preflight_aws(pool: ClientPool, regions: Sequence[str]) -> list[Any]:
    from handlers.preflight import check_aws

    return check_aws(pool, list(regions))


def preflight_rules(pool: ClientPool, queue_arn: str, regions: Sequence[str],
                    expected: int) -> list[Any]:
    """Whether the central stack's `expected` rules feed the queue, and each other
    region's forwarding stack feeds the central region."""
    from handlers.preflight import check_rules

    return check_rules(pool, queue_arn, list(regions), expected)


def preflight_queue(pool: ClientPool, url: str, default_region: str
                    ) -> tuple[bool, str, str | None]:
    """Whether the findings queue can be read, what its dead-letter queue is, and its
    ARN (None when it could not be read)."""
    from handlers.findings_queue import FindingsQueue, queue_region

    try:
        with acting_as("findings-intake"):
            attrs = FindingsQueue(pool.for_region(queue_region(url, default_region)),
                                  url).check()
    except Exception as exc:
        return False, (f"cannot read {url} ({describe_error(exc)}) — check "
                       "CORDON_FINDINGS_QUEUE_URL and the role's sqs:GetQueueAttributes"), None
    arn = attrs.get("QueueArn")
    if not attrs.get("RedrivePolicy"):
        return False, (f"{arn or url} has no dead-letter queue: a message that keeps failing "
                       "would come back for ever (python -m bot template sets one)"), arn
    return True, f"{arn or url} readable, with a dead-letter queue", arn


def warm_clients(pool: ClientPool, regions: Sequence[str]) -> None:
    pool.warm(regions)


def parse_accounts(text: str) -> dict[str, str]:
    """`name=role-arn,…` (CORDON_ACCOUNTS) → {name: role ARN}; ValueError when malformed."""
    from handlers.aws import parse_accounts as parse

    return parse(text)


def iam_policy(playbooks: list[str] | None = None, partition: str = "aws") -> dict[str, Any]:
    """The least-privilege IAM policy for these playbooks (all when None), its resources
    in `partition` (aws, aws-cn, aws-us-gov)."""
    from handlers.arns import in_partition
    from handlers.permissions import build_policy
    from playbooks.catalogue import units_for

    document: dict[str, Any] = in_partition(build_policy(units_for(playbooks)), partition)
    return document
