"""The product's errors, retryable vs permanent distinguished by type.

    CampaignError                      anything the campaign code raises on purpose
    ├── ConnectionNotConfigured        outside Airflow, no AIRFLOW_CONN_* variable for the id (also LookupError)
    ├── CampaignDefinitionError        bad conf / campaign definition: fix it and trigger again (also ValueError)
    │   └── TestSendRefused            a test send request cannot be carried out (nothing sent or recorded)
    ├── IllegalTransition              a state move the state machine forbids (nothing changed)
    ├── CampaignNotFound               no campaign has this id or key; also IllegalTransition, TestSendRefused and
    │                                  LookupError, so every caller still catches it as the type it caught before
    ├── PreflightFailed                templates, audience or account checks refuse to send (nothing left)
    ├── ComposeError                   one recipient's message cannot be built (also ValueError): row -> failed
    │   ├── TemplateProblem            a template does not compile or render; `part` and `line` say where
    │   └── AddressProblem             an address or header value cannot go into a message safely
    ├── InvalidToken                   a tracking token is malformed, of another kind, not ours (also ValueError)
    ├── SnsVerificationError           not an authentic SNS message from an allowed topic (also ValueError)
    ├── SuppressionRequestError        a manage_suppressions request cannot be carried out (also ValueError)
    └── SendError                      one SES call failed; the subclasses say what to do next
        ├── Throttled                  slow down and retry the same recipient (certainly not sent)
        ├── RecipientRejected          permanent for this recipient: ledger row -> failed
        ├── AccountStopped             SES stopped the account/sender: pause the campaign with the reason
        ├── NotSent                    the request never reached SES (connection refused): row -> pending, retry
        │   └── SlotMissed             ready too late after its limiter slot, not written: take a new slot
        └── OutcomeUnknown             the request may have reached SES (timeout): row -> unknown, never resent

    ConnectionError                    an outage that passes: NOT a CampaignError, so the task's retries handle it
    ├── LimiterUnavailable             Redis unreachable or erroring: no slot handed out, nothing may be sent
    │   └── RateUnavailable            the "auto" rate was never read from SES GetAccount
    └── DnsUnavailable                 DNS cannot answer (timeout, no nameserver, SERVFAIL, no root zone): a sender
                                       authentication check is "not checkable", never a pass or a refusal

    ValueError
    └── ConfigError                    a setting has a value the product cannot use: fix the environment (NOT a
                                       CampaignError: read where a task starts, so a bad setting fails like a bug)

A DAG task turns a CampaignError into one clear failure without retries; anything else fails the task the usual
way (and Airflow retries it). Third-party errors are wrapped with `raise ... from exc`, so the cause stays visible.
"""

from __future__ import annotations


class CampaignError(Exception):
    """Base of every error the campaign code raises on purpose."""


class ConnectionNotConfigured(CampaignError, LookupError):
    """An Airflow connection id has no AIRFLOW_CONN_* variable (and we are not inside Airflow)."""


class CampaignDefinitionError(CampaignError, ValueError):
    """The campaign definition or the run's conf is wrong; the message names the field."""


class TestSendRefused(CampaignDefinitionError):
    """The test send request cannot be carried out as asked; nothing was sent or recorded."""

    __test__ = False  # not a pytest test class, whatever its name


class IllegalTransition(CampaignError):
    """A campaign state move that the state machine does not allow; nothing was changed."""


class CampaignNotFound(IllegalTransition, TestSendRefused, LookupError):
    """No campaign has this id (or key).

    One type wherever a missing campaign is found; its bases are the types those places raised before (a state
    move: IllegalTransition, loading a definition or a test send: CampaignDefinitionError / TestSendRefused, the
    ledger: ValueError, the stats: LookupError), so no caller's except clause changes meaning.
    """


class PreflightFailed(CampaignError):
    """Preflight refused the campaign before any email left; `report` carries the details."""

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


class ComposeError(CampaignError, ValueError):
    """A message for one recipient cannot be built from the campaign as it is; a bug in the composer is not one."""


class TemplateProblem(ComposeError):
    """A campaign template cannot be compiled or rendered; the message names the part and the line."""

    def __init__(self, message: str, *, part: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.part = part
        self.line = line


class AddressProblem(ComposeError):
    """An address or other header value cannot go into a message safely (CR/LF, non-ASCII local part, invalid)."""


class InvalidToken(CampaignError, ValueError):
    """A token is malformed, truncated, of another kind, or not signed by any of our keys."""


class SnsVerificationError(CampaignError, ValueError):
    """The message is not a well-formed, authentic SNS message from an allowed topic; refuse it."""


class SuppressionRequestError(CampaignError, ValueError):
    """A manage_suppressions request that cannot be carried out as given; nothing was changed."""


class SendError(CampaignError):
    """One SES call failed; `code` is SES's error code when there is one."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class Throttled(SendError):
    """SES said slow down (TooManyRequests/Throttling): retry the same recipient later."""


class RecipientRejected(SendError):
    """SES rejected this message for good (MessageRejected, BadRequest): the recipient is failed."""


class AccountStopped(SendError):
    """SES will not send for this account or sender right now: pause the campaign, resume when fixed."""


class NotSent(SendError):
    """The request certainly did not reach SES: the row may go back to pending and be retried."""


class SlotMissed(NotSent):
    """The request was ready later than its slot allows and was not written: it takes a new slot. Written late,
    it would bunch with other workers' on-time sends and a second at SES's door would hold more than R + burst."""


class OutcomeUnknown(SendError):
    """The request may have reached SES: the row becomes `unknown` and is never resent automatically."""


class LimiterUnavailable(ConnectionError):
    """The limiter cannot hand out a slot (Redis unreachable or erroring): send nothing, retry the task later."""


class RateUnavailable(LimiterUnavailable):
    """The "auto" rate has never been read from SES GetAccount, so there is no safe rate to send at."""


class DnsUnavailable(ConnectionError):
    """DNS could not answer a lookup, so what it would have said is unknown (not the same as "no record")."""


class ConfigError(ValueError):
    """A setting has a value the product cannot use; the message names the setting."""
