"""`ses-doctor` (and `python -m campaigns.doctor`): run every check, print the report, exit with its verdict."""

from __future__ import annotations

import argparse
import json
import sys

from campaigns.doctor import checks
from campaigns.doctor.checks import AwsClients, run_checks


def main(argv: list[str] | None = None) -> int:
    """`ses-doctor`: print the report; exit 1 when a check failed, 2 when the settings themselves are unusable."""
    from campaigns.config import ConfigError, get_settings

    parser = argparse.ArgumentParser(prog="ses-doctor", description=checks.__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--from-email", help="check this sender instead of SES_FROM_EMAIL")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(f"ses-doctor: {exc}", file=sys.stderr)
        return 2
    report = run_checks(settings, AwsClients.from_airflow(settings.aws_conn_id), from_email=args.from_email)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
