"""``python -m dpcalib``: the dpcalib command line (see :mod:`dpcalib.cli`)."""

from .cli import main

if __name__ == "__main__":
    main()
