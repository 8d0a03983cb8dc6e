"""`python -m qin_lightning.bench`."""

import sys

from qin_lightning.bench.run import main

sys.exit(main())
