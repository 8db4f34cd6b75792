"""SendEmail through botocore's own pieces, without the client's per-call machinery (issue #19).

A boto3 `send_email` call spends most of its client CPU on work that is the same for every email of a task:
endpoint rules, the User-Agent string (built twice per call), a dozen event emissions and the retry bookkeeping
of a client whose retries are off. `DirectSendEmail` does that work once, at construction, and per email runs only
botocore's own request builder, the client's RequestSigner (its credentials, so a refresh from the chain still
happens), the client's HTTP session (its pool, timeouts, TLS and proxies) and botocore's response parser, so the
request on the wire and every error raised are the client's own. tests/campaigns/sending/test_ses_direct.py proves
it byte for byte against the client.

What is resolved once, and why that is the client's answer for every SendEmail we make:
- the endpoint: SES's rules depend only on the region, the endpoint_url and the EndpointId parameter, which the
  product never sends;
- the User-Agent: the client's features plus those a call registers; a SendEmail call registers none (no checksum,
  compression, account-id endpoint or CBOR protocol);
- one attempt: the sending client is built with total_max_attempts=1 (ses.client_config); needs-retry is still
  emitted for what its handler writes into an answer (MaxAttemptsReached), and any delay it asks for is ignored.
The events that let a caller watch or answer a call (provide-client-params, before-parameter-build, before-call,
before-send) are still emitted on the client, so moto, botocore's Stubber and handlers a test registers see this
path as they see the client's.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from botocore.awsrequest import AWSPreparedRequest, create_request_object
from botocore.context import start_as_current_context
from botocore.handlers import add_retry_headers

from campaigns.errors import SlotMissed

OPERATION = "SendEmail"


class DirectSendEmail:
    """SendEmail calls over one sesv2 client's signer, HTTP session and parser; shared by a task's threads."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._model = client.meta.service_model.operation_model(OPERATION)
        self._events = client.meta.events
        self._endpoint = client._endpoint
        self._event_suffix = f"{client.meta.service_model.service_id.hyphenize()}.{OPERATION}"
        self._context = self._request_context()
        self._endpoint_url, self._endpoint_headers, properties = client._resolve_endpoint_ruleset(
            self._model, {}, self._context)
        if properties:
            self._context["endpoint_properties"] = properties
        with start_as_current_context():  # a fresh call context, as each client call starts with
            self._user_agent = client._user_agent_creator.to_string()

    def _request_context(self) -> dict[str, Any]:
        """The context botocore's client starts every call of this operation with (client._make_api_call)."""
        meta, model = self._client.meta, self._model
        return {
            "client_region": meta.region_name,
            "client_config": meta.config,
            "has_streaming_input": model.has_streaming_input,
            "auth_type": model.resolved_auth_type,
            "unsigned_payload": model.unsigned_payload,
            "auth_options": meta.service_model.metadata.get("auth"),
        }

    def call(self, params: Mapping[str, Any], *, not_before: float | None = None,
             latest: float | None = None) -> dict[str, Any]:
        """SendEmail with `params`, written at `not_before` (time.monotonic()) or at once; the parsed answer.

        Raises what client.send_email raises: the client's ClientError subclass for an error answer, botocore's
        connection errors (EndpointConnectionError, ReadTimeoutError, ...) for the transport.
        """
        context = dict(self._context)
        request_dict = self._request_dict(dict(params), context)
        _, answered = self._events.emit_until_response(
            f"before-call.{self._event_suffix}", model=self._model, params=request_dict,
            request_signer=self._client._request_signer, context=context)
        if answered is None:  # no handler answered in SES's place (botocore's Stubber, a test's fault)
            answered = self._one_attempt(request_dict, context, not_before, latest)
        http, parsed = answered
        if http.status_code >= 300:
            code = parsed.get("Error", {}).get("Code")
            raise self._client.exceptions.from_code(code)(parsed, OPERATION)
        return parsed

    def _request_dict(self, params: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
        """The request dict the client builds from `params`, with the User-Agent resolved once."""
        client = self._client
        params = client._emit_api_params(api_params=params, operation_model=self._model, context=context)
        request_dict = client._convert_to_request_dict(
            api_params=params, operation_model=self._model, endpoint_url=self._endpoint_url, context=context,
            headers=self._endpoint_headers, set_user_agent_header=False)
        request_dict["headers"]["User-Agent"] = self._user_agent
        return request_dict

    def _one_attempt(self, request_dict: dict[str, Any], context: dict[str, Any], not_before: float | None,
                     latest: float | None):
        """Sign, wait for the slot, write, parse: the client endpoint's one attempt, (http response, parsed)."""
        context["retries"] = {"attempt": 1, "invocation-id": str(uuid.uuid4())}
        request = self._sign(request_dict)
        wait_until(not_before, latest)
        response, error = self._endpoint._do_get_response(request, self._model, context)
        # The retry handlers write their verdict into the answer's metadata (MaxAttemptsReached); their delay is
        # ignored: this path makes one attempt, as the sending client does.
        self._events.emit(f"needs-retry.{self._event_suffix}", response=response, endpoint=self._endpoint,
                          operation=self._model, attempts=1, caught_exception=error, request_dict=request_dict)
        if error is not None:
            raise error
        if "ResponseMetadata" in response[1]:
            response[1]["ResponseMetadata"]["RetryAttempts"] = 0
        return response

    def _sign(self, request_dict: dict[str, Any]) -> AWSPreparedRequest:
        """What the client's request-created handlers do (sign, retry headers), then the bytes to send."""
        request = create_request_object(request_dict)
        self._client._request_signer.sign(OPERATION, request)
        add_retry_headers(request)
        return self._endpoint.prepare_request(request)


def wait_until(not_before: float | None, latest: float | None = None) -> None:
    """Sleep until the time.monotonic() instant `not_before`; at once when it is None or past. Raises SlotMissed
    when it is already past `latest` (None: no limit), so the request is not written late."""
    if not_before is None:
        return
    delay = not_before - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    if latest is not None and (now := time.monotonic()) > latest:
        raise SlotMissed(f"the request could leave only {(now - not_before) * 1000:.1f} ms after its slot, later "
                         f"than the {(latest - not_before) * 1000:.1f} ms it may")
