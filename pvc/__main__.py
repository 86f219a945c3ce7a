"""`python -m pvc` runs the `pvc` command."""

from pvc.cli import main

if __name__ == "__main__":
    main()
