"""`python -m spaces ...`: see spaces/cli.py."""
import sys

from spaces.cli import main

sys.exit(main())
