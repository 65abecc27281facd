"""`python -m sdk.cli ...`, the same as `pocketformer ...`."""
import sys

from sdk.cli.app import main

sys.exit(main())
