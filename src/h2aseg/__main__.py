"""``python -m h2aseg`` (also what ``torchrun -m h2aseg`` runs)."""

from h2aseg.cli import main

main()
