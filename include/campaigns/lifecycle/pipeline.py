"""The send_campaign pipeline, one function per DAG task. DAG files only wire these together.

resolve_campaign -> send_tests_first -> preflight -> snapshot_recipients -> plan_batches -> send_batch.expand(...)
-> finalize
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from campaigns import db, queries, states
from campaigns.config import MAX_BATCH_SIZE, MIN_BATCH_SIZE, Settings, get_settings
from campaigns.errors import CampaignDefinitionError, IllegalTransition
from campaigns.feedback.links import register_links
from campaigns.lifecycle import definitions, form, scheduling, testsend
from campaigns.lifecycle.reputation import ReputationGuard
from campaigns.sending import ledger, preflight
from campaigns.sending.ledger import Attempt
from campaigns.sending.messages import composer_for
from campaigns.sending.plan import SendTask, describe, parallelism_for, plan
from campaigns.sending.ratelimit import slot_batch
from campaigns.sending.sender import SendBatch
from campaigns.states import Row

if TYPE_CHECKING:
    from campaigns.sending.resources import SendResources

log = logging.getLogger(__name__)
STARTABLE = {states.DRAFT, states.SCHEDULED, states.HELD, states.PAUSED}


@dataclass(frozen=True)
class RunOptions:
    """A run's conf after defaults: conf > environment > default."""

    batch_size: int
    dry_run: bool
    test_recipients: tuple[str, ...] = ()  # given: the run sends only [TEST] copies to these, then stops

    @classmethod
    def from_conf(cls, conf: dict[str, Any], settings: Settings) -> RunOptions:
        batch_size = conf.get("batch_size")
        if batch_size is None:
            batch_size = settings.batch_size
        if (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                or not MIN_BATCH_SIZE <= batch_size <= MAX_BATCH_SIZE):
            raise CampaignDefinitionError(f"batch_size must be a whole number from {MIN_BATCH_SIZE} to "
                                          f"{MAX_BATCH_SIZE}, got {batch_size!r}")
        tests = form.lines(conf, "test_recipients")
        if len(tests) > testsend.MAX_RECIPIENTS:
            raise CampaignDefinitionError(
                f"test_recipients: at most {testsend.MAX_RECIPIENTS} addresses, got {len(tests)}")
        return cls(batch_size=batch_size, dry_run=bool(conf.get("dry_run") or False), test_recipients=tuple(tests))


def definition_from_conf(conf: dict[str, Any], *, settings: Settings, now: datetime,
                         run_date: datetime) -> definitions.CampaignDefinition | None:
    """The run's campaign: the inline `campaign` JSON or the form's fields, parsed alike; None for `campaign_id`."""
    filled = form.filled_fields(conf)
    given = [name for name, present in (("`campaign_id`", conf.get("campaign_id") is not None),
                                         ("`campaign`", conf.get("campaign") is not None),
                                         (f"the form's fields ({', '.join(filled)})", bool(filled))) if present]
    if len(given) != 1:
        raise CampaignDefinitionError(
            "give exactly one of `campaign_id` (an existing campaign), `campaign` (an inline definition) or the "
            f"form's Content and Audience fields; got {' and '.join(given) or 'none of them'}")
    defaults = {"default_from_email": settings.from_email, "default_from_name": settings.from_name,
                "default_reply_to": settings.reply_to}
    if conf.get("campaign") is not None:
        definitions.validate_inline(conf["campaign"])
        return definitions.CampaignDefinition.parse(conf["campaign"], **defaults)
    if filled:
        raw = form.form_definition(conf, run_date=run_date, now=now, settings=settings)
        return definitions.CampaignDefinition.parse(raw, prefix="", **defaults)
    if (conf.get("when") or form.NOW) != form.NOW:
        raise CampaignDefinitionError(
            "when: a stored campaign (campaign_id) is sent now; to schedule it, define it with a send time")
    return None


def resolve_campaign(conf: dict[str, Any], run_id: str, *, now: datetime | None = None,
                     run_date: datetime | None = None) -> int | None:
    """Load the campaign by id, or create/update it by key from the inline definition or the form's fields.

    Returns its id when this run sends it (or, with test recipients, only its [TEST] copies) now, None when it
    must not be sent now: scheduled for later, a recurring template, or (for a run the dispatcher started, conf
    `scheduled_for`) rescheduled, held or taken by another run. `run_date` (default `now`) dates a derived key.
    Every check runs before anything is stored; nothing here talks to SES.
    """
    settings = get_settings()
    options = RunOptions.from_conf(conf, settings)  # rules across fields fail here, before anything is sent
    now = now or datetime.now(UTC)
    definition = definition_from_conf(conf, settings=settings, now=now, run_date=run_date or now)
    if options.test_recipients:  # the addresses are checked before the campaign is stored
        request_for_tests(options, campaign_id=conf.get("campaign_id"), key=definition and definition.key)
    scheduled_for = conf.get("scheduled_for")
    if scheduled_for is not None:
        scheduled_for = scheduling.parse_send_at(scheduled_for, field="scheduled_for")
    with db.campaign_db(settings.db_conn_id) as conn:
        timed = False
        if definition is not None:
            log.info("campaign key: %s", definition.key)
            campaign = definitions.upsert_campaign(conn, definition, now=now,
                                                   keep_timing=bool(options.test_recipients))
            timed = definition.send_at is not None or definition.recurrence is not None
        else:
            campaign = definitions.load_campaign(conn, conf["campaign_id"])
        if options.test_recipients:
            log.info("campaign %s (%r) is %s; this run sends only [TEST] copies to %s", campaign["id"],
                     campaign["key"], campaign["status"], ", ".join(options.test_recipients))
            return campaign["id"]
        status = campaign["status"]
        not_now = scheduling.skip_reason(conn, campaign, run_id=run_id, now=now, scheduled_for=scheduled_for,
                                         timed_definition=timed,
                                         hold_after=timedelta(hours=settings.schedule_hold_after_hours))
        if not_now is not None:
            log.info("campaign %s (%r) is %s; nothing is sent by this run: %s", campaign["id"], campaign["key"],
                     status, not_now)
            return None
        if status == states.PAUSED and campaign["run_id"] == run_id:
            # campaign_control resumed it for this run, then someone paused it before the run started
            log.info("campaign %s (%r) was paused after this run was asked to send it; nothing is sent",
                     campaign["id"], campaign["key"])
            return None
        if status == states.RUNNING and campaign["run_id"] not in (None, run_id):
            raise IllegalTransition(f"campaign {campaign['key']!r} is already being sent by run {campaign['run_id']}")
        if status != states.RUNNING and status not in STARTABLE:
            raise IllegalTransition(f"campaign {campaign['key']!r} is {status}; it cannot be sent again "
                                    "(use a new key for a new campaign)")
        log.info("campaign %s (%r) is %s", campaign["id"], campaign["key"], status)
        return campaign["id"]


def request_for_tests(options: RunOptions, *, campaign_id: int | None = None,
                 key: str | None = None) -> testsend.TestSendRequest:
    """The run's test recipients as the send_test_email DAG's request, checked (at most 20, valid addresses)."""
    return testsend.TestSendRequest.parse({"campaign_id": campaign_id, "campaign_key": None if campaign_id else key,
                                           "recipients": list(options.test_recipients)})


def send_tests_first(campaign_id: int, conf: dict[str, Any], run_id: str) -> dict[str, Any] | None:
    """With test recipients: send only the [TEST] copies (testsend, as send_test_email does); else None.

    The log says how to send for real: test -> look -> send is the analyst's path.
    """
    from campaigns.sending.resources import send_resources
    from campaigns.sending.ses import SesTransport

    settings = get_settings()
    options = RunOptions.from_conf(conf, settings)
    if not options.test_recipients:
        return None
    with (send_resources(settings=settings) as resources,
          db.campaign_db(settings.db_conn_id, autocommit=True) as conn):
        # a test address that is not a contact renders with the form's sample values, stand-ins for the rest
        given = testsend.parse_sample_lines(form.lines(conf, "test_sample_values"))
        samples = testsend.sample_values(definitions.load_campaign(conn, campaign_id), settings, given)
        request = replace(request_for_tests(options, campaign_id=campaign_id), sample_values=samples)
        transport = SesTransport(resources.ses_client, configuration_set=settings.configuration_set)
        report = testsend.send_test(conn, request, run_id=run_id, transport=transport, limiter=resources.limiter,
                                    settings=settings)
    log.info("test first: %d [TEST] cop%s sent, %d failed; nothing else was sent. To send for real, trigger "
             "send_campaign again with the same fields and no test addresses, or press Start on the Campaigns "
             "page: campaign %s (%r)", report["sent"], "y" if report["sent"] == 1 else "ies", report["failed"],
             campaign_id, report["key"])
    return report


def run_preflight(campaign_id: int, conf: dict[str, Any], ses_client) -> dict[str, Any]:
    """Preflight the campaign; the report is stored on the campaign either way."""
    from psycopg.types.json import Jsonb

    from campaigns.errors import PreflightFailed

    settings = get_settings()
    with db.campaign_db(settings.db_conn_id, autocommit=True) as conn:
        campaign = definitions.load_campaign(conn, campaign_id)
        try:
            report = preflight.run(conn, campaign, composer_factory=lambda c: composer_for(c, settings),
                                   settings=settings, ses_client=ses_client)
        except PreflightFailed as exc:
            conn.execute(queries.load("pipeline")["save-preflight"],
                         {"report": Jsonb(exc.report), "campaign_id": campaign_id})
            raise
        conn.execute(queries.load("pipeline")["save-preflight"],
                     {"report": Jsonb(report), "campaign_id": campaign_id})
    log.info("preflight passed: %s sendable, %s rendered", report["audience"]["sendable"],
             report["audience"]["rendered"])
    return report


def snapshot_recipients(campaign_id: int, conf: dict[str, Any]) -> dict[str, Any]:
    settings = get_settings()
    options = RunOptions.from_conf(conf, settings)
    with db.campaign_db(settings.db_conn_id, autocommit=True) as conn:
        campaign = definitions.load_campaign(conn, campaign_id)
        from campaigns.audience.filters import Audience

        summary = ledger.snapshot(conn, campaign_id, Audience.parse(campaign["audience"]), options.batch_size)
    log.info("snapshot: %s recipients, %s pending, skipped by reason %s", summary["recipients"],
             summary["pending"], summary["skipped_by_reason"])
    return summary


def plan_batches(campaign_id: int, conf: dict[str, Any], run_id: str, rate: float) -> list[dict[str, Any]]:
    """Small descriptors for the mapped send tasks; marks the campaign running (unless this is a dry run)."""
    settings = get_settings()
    options = RunOptions.from_conf(conf, settings)
    with db.campaign_db(settings.db_conn_id, autocommit=True) as conn:
        campaign = definitions.load_campaign(conn, campaign_id)
        page_size = (campaign["snapshot"] or {}).get("page_size", options.batch_size)
        shape = parallelism_for(conn, campaign_id, rate, settings)
        tasks = plan(conn, campaign_id, page_size=page_size, rate=rate, task_seconds=settings.max_send_task_seconds,
                     parallel=shape.tasks, share=shape.long_campaign_share)
        log.info("plan: %s", describe(tasks, page_size, rate, shape, settings))
        if options.dry_run:
            log.info("dry run: nothing is sent; the campaign stays %s", campaign["status"])
            return []
        if campaign["status"] != states.RUNNING:
            states.move_campaign(conn, campaign_id, states.RUNNING, expected=STARTABLE)
        conn.execute(queries.load("pipeline")["set-run"], {"run_id": run_id, "campaign_id": campaign_id})
    return [task.as_dict() for task in tasks]


def send_batch(descriptor: dict[str, Any], *, attempt: Attempt, resources: SendResources,
               settings: Settings | None = None) -> dict[str, Any]:
    """Send one mapped task's pages; pauses the campaign if SES stopped the account."""
    from campaigns.sending.ses import SesTransport

    settings = settings or get_settings()
    task = SendTask.from_dict(descriptor)
    dsn = db.resolve_postgres_dsn(settings.db_conn_id)
    with db.connect(dsn, autocommit=True) as conn:
        campaign = definitions.load_campaign(conn, task.campaign_id)
    if campaign["status"] != states.RUNNING:
        log.info("%s: campaign is %s; nothing to send", task.label, campaign["status"])
        return {"label": task.label, "skipped_because": campaign["status"]}
    builder = composer_for(campaign, settings)
    with db.connect(dsn, autocommit=True) as conn:
        # Before any message carrying them leaves: the click endpoint redirects only to registered links.
        register_links(conn, task.campaign_id, builder.links)
    # The guard's run id goes on its campaign_actions row, so a pause can be traced to the DAG run that saw the rates.
    batch = SendBatch(
        task, attempt=attempt, from_email=campaign["from_email"], builder=builder,
        transport=SesTransport(resources.ses_client, configuration_set=settings.configuration_set),
        limiter=resources.limiter, connect=lambda: db.connect(dsn, autocommit=True), threads=resources.threads,
        guard=ReputationGuard.from_settings(task.campaign_id, settings, run_id=attempt.run_id),
        limiter_outage_seconds=settings.limiter_outage_seconds,
        slot_batch=slot_batch(resources.limiter.rate, resources.threads),
        slot_lateness=settings.send_timing_allowance / 2)
    report = batch.run()
    log.info("%s: %s", task.label, report.as_dict())
    if report.account_stopped:
        # Another task may have paused it first: then there is nothing to move.
        with db.connect(dsn, autocommit=True) as conn, contextlib.suppress(IllegalTransition):
            states.move_campaign(conn, task.campaign_id, states.PAUSED,
                                 reason=f"SES stopped sending: {report.account_stopped}", expected=states.RUNNING)
        log.error("%s: SES stopped sending (%s); campaign paused, resume it once the account is fixed",
                  task.label, report.account_stopped)
    elif report.error is not None:
        raise report.error
    return {"label": task.label, **report.as_dict()}


def unknown_remaining(unknown: int) -> str | None:
    """A sent campaign's status_reason while recipients are unknown: how many, and what a person can do."""
    if not unknown:
        return None
    return (f"{unknown} recipient(s) unknown: SES's answer was lost and they are never resent by themselves; "
            "reconcile_unknown reports those no SES event settles, and the Campaigns view can release them for one "
            "more send")


def finalize(campaign_id: int, run_id: str | None = None) -> dict[str, Any]:
    """Count the ledger, settle the campaign's final state, return the summary (also stored on the campaign).

    Returns `incomplete` = the reason when recipients are still pending because send tasks failed. A campaign that
    another run drives now (it was resumed while this run was ending) is counted but its state is left alone.
    """
    from psycopg.types.json import Jsonb

    with db.campaign_db(get_settings().db_conn_id, autocommit=True) as conn:
        campaign = definitions.load_campaign(conn, campaign_id)
        summary = ledger.summarize(ledger.status_counts(conn, campaign_id))
        open_rows = summary[Row.PENDING] + summary[Row.SENDING]
        incomplete = None
        foreign = run_id is not None and campaign["run_id"] not in (None, run_id)
        if foreign:
            log.info("campaign %s is driven by run %s now; this run leaves its state alone", campaign_id,
                     campaign["run_id"])
            summary.update(campaign_id=campaign_id, key=campaign["key"], status=campaign["status"],
                           status_reason=campaign["status_reason"], incomplete=None)
            return summary
        if campaign["status"] == states.RUNNING:
            if open_rows == 0:
                states.move_campaign(conn, campaign_id, states.SENT, expected=states.RUNNING,
                                     reason=unknown_remaining(summary[Row.UNKNOWN]))
            else:
                incomplete = (f"{open_rows} recipient(s) still pending after the send tasks ended; "
                              "resume the campaign to send them")
                states.move_campaign(conn, campaign_id, states.PAUSED, reason=incomplete, expected=states.RUNNING)
        elif campaign["status"] == states.CANCELLED:
            summary[Row.CANCELLED] += ledger.cancel_pending(conn, campaign_id)
            summary[Row.PENDING] = 0
        final = definitions.load_campaign(conn, campaign_id)
        summary.update(campaign_id=campaign_id, key=final["key"], status=final["status"],
                       status_reason=final["status_reason"], incomplete=incomplete)
        conn.execute(queries.load("pipeline")["save-summary"],
                     {"summary": Jsonb(summary), "campaign_id": campaign_id})
    log.info("campaign %s (%r) is %s: %s; %d unknown remain", campaign_id, summary["key"], summary["status"],
             {k: summary[k] for k in ("recipients", *Row.ALL)}, summary[Row.UNKNOWN])
    return summary
