"""`python -m lmforge.cli ...` (what `torchrun -m lmforge.cli pretrain ...` runs)."""

from lmforge.cli import main

main()
