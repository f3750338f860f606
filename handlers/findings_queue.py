"""The SQS queue an EventBridge rule feeds with findings (`python -m bot template`
creates both): long-polled by the intake, each message deleted once handled.

What real AWS does that moto does not show: a message not deleted within its
visibility timeout is delivered again (to this or another replica), and after the
queue's maxReceiveCount deliveries it moves to the dead-letter queue; long polling
returns as soon as a message arrives, or empty after WaitTimeSeconds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from handlers.aws import Clients

# What the intake calls (the declared unit "findings-intake").
PERMISSIONS = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
               "sqs:GetQueueAttributes")
# The queue's visibility timeout (`python -m bot template` sets it): long enough to look
# up a target and post its card; a message not deleted by then is delivered again.
VISIBILITY_SECONDS = 120


@dataclass(frozen=True)
class QueueMessage:
    message_id: str
    receipt: str
    body: str
    receive_count: int
    sent_at: float = 0.0  # when it was sent to the queue (epoch seconds; 0: not known)


def queue_region(url: str, default: str) -> str:
    """The region in an SQS queue URL (https://sqs.REGION.amazonaws.com/…)."""
    match = re.match(r"https?://sqs[.-]([a-z0-9-]+)\.amazonaws\.com", url)
    return match.group(1) if match else default


class FindingsQueue:
    def __init__(self, clients: Clients, url: str) -> None:
        self.sqs: Any = clients.client("sqs")
        self.url = url

    def receive(self, wait_seconds: int = 20) -> list[QueueMessage]:
        # The queue's own visibility timeout applies (the template sets it).
        resp = self.sqs.receive_message(
            QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"])
        return [QueueMessage(m["MessageId"], m["ReceiptHandle"], m.get("Body", ""),
                             int((m.get("Attributes") or {}).get("ApproximateReceiveCount", 1)),
                             int((m.get("Attributes") or {}).get("SentTimestamp", 0)) / 1000)
                for m in resp.get("Messages", [])]

    def delete(self, message: QueueMessage) -> None:
        self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message.receipt)

    def check(self) -> dict[str, Any]:
        """The queue's attributes (preflight: it exists and can be read)."""
        return dict(self.sqs.get_queue_attributes(
            QueueUrl=self.url, AttributeNames=["QueueArn", "RedrivePolicy"])["Attributes"])
