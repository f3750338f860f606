"""Console links, so that a responder can check any claim of the card or the thread in
one click: the right console for the region's partition, the right page for each kind
of resource."""

from __future__ import annotations

import re
from typing import Any

from bot.text import link

RESOURCE = re.compile(r"\b((?:i|eni|sg|snap|ami|vol)-[0-9a-f]{8,17}|(?:AKIA|ASIA)[A-Z0-9]{16})\b")
EC2_PAGES = {
    "i": "InstanceDetails:instanceId",
    "eni": "NetworkInterface:networkInterfaceId",
    "sg": "SecurityGroup:groupId",
    "snap": "SnapshotDetails:snapshotId",
    "ami": "ImageDetails:imageId",
    "vol": "VolumeDetails:volumeId",
}


def console_host(region: str) -> str:
    if region.startswith("cn-"):
        return "console.amazonaws.cn"
    if region.startswith("us-gov-"):
        return "console.amazonaws-us-gov.com"
    return "console.aws.amazon.com"


def console_url(resource_id: str, region: str, facts: dict[str, Any] | None = None) -> str:
    """The console page of an EC2 resource (by its id's prefix), or of an access key's
    user (its security credentials); "" when there is none to give."""
    host = console_host(region)
    if resource_id.startswith(("AKIA", "ASIA")):
        user = (facts or {}).get("user")
        if not user:
            return ""
        return f"https://{host}/iam/home#/users/details/{user}?section=security_credentials"
    prefix = resource_id.split("-", 1)[0]
    page = EC2_PAGES.get(prefix)
    if page is None:
        return ""
    return f"https://{region}.{host}/ec2/home?region={region}#{page}={resource_id}"


def linked(ids: list[str], region: str, facts: dict[str, Any] | None = None,
           limit: int = 2900) -> str:
    """`<url|id>` for each id (once each, in order), within `limit` characters."""
    out: list[str] = []
    size = 0
    seen: set[str] = set()
    for resource_id in ids:
        url = console_url(resource_id, region, facts)
        if not url or resource_id in seen:
            continue
        seen.add(resource_id)
        item = link(url, resource_id)
        if size + len(item) + 3 > limit:
            out.append(f"… and {len(ids) - len(out)} more")
            break
        out.append(item)
        size += len(item) + 3
    return " · ".join(out)


def ids_in_text(text: str) -> list[str]:
    seen: list[str] = []
    for found in RESOURCE.findall(text):
        if found not in seen:
            seen.append(found)
    return seen
