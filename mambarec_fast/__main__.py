"""`python -m mambarec_fast` runs the CLI."""
import sys

from .cli import main

sys.exit(main())
