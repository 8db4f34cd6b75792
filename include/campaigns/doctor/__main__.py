"""`python -m campaigns.doctor`: the same as `ses-doctor`."""

import sys

from campaigns.doctor.cli import main

sys.exit(main())
