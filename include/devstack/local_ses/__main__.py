"""`python -m devstack.local_ses --host 127.0.0.1 --port N`: the local SES (moto + the record + the inbox).

With `--sns-endpoint` it also publishes the SES events of every accepted message as signed SNS notifications to
that endpoint (the tracking service's /webhooks/ses), after the subscription handshake:

    POST /sns/subscribe    send the SubscriptionConfirmation (the stack calls it once the tracking service answers)
    GET  /sns/confirm      SNS's ConfirmSubscription, where the service's SNS_TEST_CONFIRM_URL points
    GET  /sns/status       {"confirmed": bool, "subscription_arn": ...}
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from werkzeug.wrappers import Response

from devstack.local_ses.server import DEFAULT_MAX_MESSAGES, LocalSes, create_app, make_server


def _exit(signum: int, frame: Any) -> None:
    sys.exit(0)  # as moto_server does: SIGTERM from `make down` ends the process cleanly


def _json(environ: dict[str, Any], start_response: Callable, status: int, body: dict[str, Any]) -> Iterable[bytes]:
    return Response(json.dumps(body), status=status, mimetype="application/json")(environ, start_response)


def attach_publisher(app: LocalSes, args: argparse.Namespace) -> Any:
    """Start the SNS event publisher, listen to every accepted message and mount its /sns/* routes."""
    from devstack.local_ses.events import EventRules
    from devstack.local_ses.publisher import PublisherConfig, SnsPublisher

    publisher = SnsPublisher(PublisherConfig(
        endpoint=args.sns_endpoint, topic_arn=args.sns_topic_arn, signing_key=Path(args.sns_signing_key),
        signing_cert=Path(args.sns_signing_cert), ca_file=Path(args.sns_ca_file) if args.sns_ca_file else None,
        rules=EventRules(default_configuration_set=args.default_configuration_set,
                         soft_bounce_share=args.soft_bounce_share,
                         delivery_delay_share=args.delivery_delay_share))).start()
    app.add_listener(publisher.publish)
    app.mount("/sns/confirm", publisher.confirm_app)

    def subscribe(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            return _json(environ, start_response, 405, {"error": "POST to send the confirmation"})
        return _json(environ, start_response, 202, {"message_id": publisher.subscribe()})

    def status(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        return _json(environ, start_response, 200, {"confirmed": publisher.confirmed,
                                                    "subscription_arn": publisher.subscription_arn})

    app.mount("/sns/subscribe", subscribe)
    app.mount("/sns/status", status)
    return publisher


def main(argv: list[str] | None = None) -> None:
    """Serve the local SES with a threaded WSGI server until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m devstack.local_ses", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=25500)
    parser.add_argument("--max-messages", type=int, default=DEFAULT_MAX_MESSAGES,
                        help="how many accepted messages the record and the inbox keep (oldest forgotten first)")
    events = parser.add_argument_group("SES events through SNS (all of --sns-* but --sns-ca-file are needed)")
    events.add_argument("--sns-endpoint", help="the https URL notifications are POSTed to (/webhooks/ses)")
    events.add_argument("--sns-topic-arn", help="the topic the notifications come from (in SNS_TOPIC_ARNS)")
    events.add_argument("--sns-signing-key", help="PEM RSA key the notifications are signed with")
    events.add_argument("--sns-signing-cert", help="its certificate (what the service's SNS_TEST_CERT_PEM names)")
    events.add_argument("--sns-ca-file", help="the only certificate trusted for the endpoint")
    events.add_argument("--default-configuration-set",
                        help="publish events for messages sent without ConfigurationSetName too, as this set")
    events.add_argument("--soft-bounce-share", type=float, default=0.0,
                        help="share of ordinary addresses that soft-bounce instead of being delivered (realism; 0)")
    events.add_argument("--delivery-delay-share", type=float, default=0.0,
                        help="share of ordinary addresses delivered after a DeliveryDelay event (realism; 0)")
    args = parser.parse_args(argv)
    needed = ("sns_endpoint", "sns_topic_arn", "sns_signing_key", "sns_signing_cert")
    given = [name for name in needed if getattr(args, name)]
    if given and len(given) != len(needed):
        parser.error("to publish events give all of " + ", ".join("--" + n.replace("_", "-") for n in needed))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)
    app, _ = create_app(max_messages=args.max_messages)
    if given:
        attach_publisher(app, args)
    server = make_server(app, args.host, args.port)
    logging.getLogger("devstack.local_ses").info(
        "local SES on http://%s:%s (inbox: /inbox, record: /local-ses/messages, events: %s)", args.host,
        server.server_port, args.sns_endpoint or "off")
    server.serve_forever()


if __name__ == "__main__":
    main()
