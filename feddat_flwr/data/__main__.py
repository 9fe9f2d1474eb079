"""`python -m feddat_flwr.data`: see feddat_flwr/data/cli.py."""

import sys

from feddat_flwr.data.cli import main

sys.exit(main())
