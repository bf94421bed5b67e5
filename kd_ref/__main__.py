"""``python -m kd_ref ...`` is the ``kd-ref`` command (and works under ``torchrun -m kd_ref``)."""
import sys

from .cli import main

sys.exit(main())
