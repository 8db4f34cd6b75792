"""The SES transport: one recipient per SendEmail call (SES v2, raw MIME), errors classified by code.

botocore's own retries are off (total_max_attempts=1): a read timeout retried by botocore could send the same
message twice, and SES has no idempotency token. Throttling is retried by the sender, through the limiter.

Gmail's feedback loop reads the `Feedback-ID` header, which SES writes itself as
`<ses:feedback-id-a>:<ses:feedback-id-b>:<SES's own id>:AmazonSES` from two message tags; `feedback_tags` fills
them (the campaign, and the list the List-Id names). Writing the header ourselves would give the message two.

A send is held at its limiter slot after it is signed (`not_before`), and a request ready too late after it is not
written (`latest`, SlotMissed): signing first means the time a request reaches SES no longer varies by how long
signing took under load, so a 1-second window at SES's door holds R + burst (docs/operators.md, "The rate at
SES's door"). The request goes out through `ses_direct` (botocore's
own signer, HTTP session and parser without the client's per-call machinery: about 40% less client CPU) unless
`direct=False` asks for client.send_email itself.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from campaigns.errors import AccountStopped, NotSent, OutcomeUnknown, RecipientRejected, Throttled
from campaigns.sending.ses_direct import OPERATION, DirectSendEmail, wait_until

THROTTLING = {"TooManyRequestsException", "ThrottlingException", "Throttling"}
REJECTED = {"MessageRejected", "BadRequestException", "InvalidParameterValue", "InvalidParameterValueException"}
ACCOUNT_STOPPED = {"SendingPausedException", "AccountSuspendedException", "MailFromDomainNotVerifiedException",
                   "NotFoundException", "LimitExceededException", "ConfigurationSetDoesNotExistException"}
NOT_PROCESSED = {"ServiceUnavailable", "ServiceUnavailableException"}
FEEDBACK_ID_A, FEEDBACK_ID_B = "ses:feedback-id-a", "ses:feedback-id-b"
MAX_TAG_VALUE = 256
_NOT_TAG_VALUE = re.compile(r"[^A-Za-z0-9_-]+")  # SES MessageTag values: ASCII letters, digits, '_' and '-' only


def tag_value(text: str) -> str:
    """`text` as an SES message tag value: every other run of characters becomes '_', at most 256 characters."""
    return _NOT_TAG_VALUE.sub("_", text)[:MAX_TAG_VALUE] or "_"


def feedback_tags(campaign: str, sender: str) -> dict[str, str]:
    """The two tags SES puts first in the Feedback-ID header: the campaign, then the sender or list identity.

    Never a recipient's value: Gmail reports per Feedback-ID part, and parts must stay aggregate.
    """
    return {FEEDBACK_ID_A: tag_value(campaign), FEEDBACK_ID_B: tag_value(sender)}


def client_config(max_connections: int = 10) -> Config:
    """botocore settings for sending: no automatic retries, bounded timeouts, a connection per send thread.

    No client-side parameter validation: the product builds every request itself, SES validates them anyway (a
    bad value is a BadRequestException, which classify maps), and validating cost ~5% of a send's client CPU.
    """
    return Config(
        parameter_validation=False,
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        max_pool_connections=max(10, max_connections),
    )


def ses_client_from_airflow(aws_conn_id: str = "aws_default", max_connections: int = 10):
    """A sesv2 client from the Amazon provider's AwsBaseHook (endpoint_url in the connection's extras points at a
    local SES), with the sending config above."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    hook = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="sesv2", config=client_config(max_connections))
    return hook.conn


def endpoint_is_local(client: Any) -> bool:
    """True when the client talks to a local SES stand-in (moto), whose account limits are not real."""
    host = client.meta.endpoint_url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    return not host.endswith(".amazonaws.com") and not host.endswith(".amazonaws.com.cn")


class SesTransport:
    """Sends one raw message to one recipient; raises a SendError subclass that says what to do next.

    `direct`: send through ses_direct.DirectSendEmail (the default, for its CPU); False sends with
    client.send_email, the reference the direct path is tested against.
    """

    def __init__(self, client: Any, *, configuration_set: str | None = None, direct: bool = True) -> None:
        self.client = client
        self.configuration_set = configuration_set
        self._send_email = DirectSendEmail(client).call if direct else ClientSendEmail(client).call

    def send(self, *, raw: bytes, from_email: str, to: str, tags: Mapping[str, str],
             not_before: float | None = None, latest: float | None = None) -> str:
        """Send and return SES's MessageId.

        `not_before`: a time.monotonic() instant (the limiter's slot); the request is built and signed first,
        then written no earlier than it, and never after `latest` (if given): a request ready later raises
        SlotMissed unwritten. One call is one attempt: a retry (after Throttled or SlotMissed) is a new call that
        needs a new slot, and is signed anew.
        """
        params: dict[str, Any] = {
            "FromEmailAddress": from_email,
            "Destination": {"ToAddresses": [to]},
            "Content": {"Raw": {"Data": raw}},
            "EmailTags": [{"Name": name, "Value": value} for name, value in tags.items()],
        }
        if self.configuration_set:
            params["ConfigurationSetName"] = self.configuration_set
        try:
            return self._send_email(params, not_before=not_before, latest=latest)["MessageId"]
        except ClientError as exc:
            raise classify(exc) from exc
        except (EndpointConnectionError, ConnectTimeoutError) as exc:
            raise NotSent(f"SES endpoint unreachable: {exc}") from exc
        except (ReadTimeoutError, ConnectionClosedError) as exc:
            raise OutcomeUnknown(f"no answer from SES after the request was sent: {exc}") from exc


class ClientSendEmail:
    """client.send_email, held at `not_before` by a before-send handler: after botocore has signed the request."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._slot = threading.local()  # the calling thread's not_before; a task's threads share the client
        service_id = client.meta.service_model.service_id.hyphenize()
        # first, so the wait comes before any handler that answers in SES's place (moto)
        client.meta.events.register_first(f"before-send.{service_id}.{OPERATION}", self._hold)

    def call(self, params: Mapping[str, Any], *, not_before: float | None = None,
             latest: float | None = None) -> dict[str, Any]:
        """SendEmail with `params` through the client, written no earlier than `not_before` (nor after `latest`)."""
        self._slot.window = (not_before, latest)
        try:
            return self._client.send_email(**params)
        finally:
            self._slot.window = (None, None)

    def _hold(self, **kwargs: Any) -> None:
        wait_until(*getattr(self._slot, "window", (None, None)))


def classify(exc: ClientError):
    """Map an SES error answer to what the sender must do."""
    error = exc.response.get("Error", {})
    code = error.get("Code", "")
    message = f"{code}: {error.get('Message', '')}".strip()
    if code in THROTTLING:
        return Throttled(message, code)
    if code in REJECTED:
        return RecipientRejected(message, code)
    if code in ACCOUNT_STOPPED:
        return AccountStopped(message, code)
    if code in NOT_PROCESSED:
        return Throttled(message, code)
    # InternalFailure and unknown codes: SES got the request and we cannot tell whether it sent.
    return OutcomeUnknown(message, code)
