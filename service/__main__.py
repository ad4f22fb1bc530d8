"""`python -m service` is the `orchestrator` command."""

import sys

from service.cli import main

sys.exit(main())
