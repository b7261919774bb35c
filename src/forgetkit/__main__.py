"""``python -m forgetkit`` (and ``accelerate launch -m forgetkit``)."""

import sys

from forgetkit.cli import main

sys.exit(main())
