"""The product's errors, retryable vs permanent distinguished by type.

    CampaignError                      anything the campaign code raises on purpose
    ├── CampaignDefinitionError        bad conf / campaign definition: fix it and trigger again
    ├── IllegalTransition              a state move the state machine forbids (nothing changed)
    ├── PreflightFailed                templates, audience or account checks refuse to send (nothing left)
    └── SendError                      one SES call failed; the subclasses say what to do next
        ├── Throttled                  slow down and retry the same recipient (certainly not sent)
        ├── RecipientRejected          permanent for this recipient: ledger row -> failed
        ├── AccountStopped             SES stopped the account/sender: pause the campaign with the reason
        ├── NotSent                    the request never reached SES (connection refused): row -> pending, retry
        └── OutcomeUnknown             the request may have reached SES (timeout): row -> unknown, never resent

    ValueError
    └── ConfigError                    a setting has a value the product cannot use: fix the environment
"""

from __future__ import annotations


class CampaignError(Exception):
    """Base of every error the campaign code raises on purpose."""


class CampaignDefinitionError(CampaignError, ValueError):
    """The campaign definition or the run's conf is wrong; the message names the field."""


class IllegalTransition(CampaignError):
    """A campaign state move that the state machine does not allow; nothing was changed."""


class PreflightFailed(CampaignError):
    """Preflight refused the campaign before any email left; `report` carries the details."""

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


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


class OutcomeUnknown(SendError):
    """The request may have reached SES: the row becomes `unknown` and is never resent automatically."""


class ConfigError(ValueError):
    """A setting has a value the product cannot use; the message names the setting."""
