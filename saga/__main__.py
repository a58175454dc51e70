"""`python -m saga` (also what `torchrun -m saga` runs)."""

from saga.cli import main

if __name__ == "__main__":
    main()
