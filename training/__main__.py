"""python -m training (and torchrun -m training): the skin-train command line."""

from training.cli import main

raise SystemExit(main())
