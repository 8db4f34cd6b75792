"""`python -m campaigns.doctor`: the same as `ses-doctor`."""

import sys

from campaigns.doctor.checks import main

sys.exit(main())
