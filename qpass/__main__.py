"""`python -m qpass …`: the qpass command line, also as torchrun launches it for data-parallel
calibration (`torchrun --nproc-per-node N -m qpass quantize …`, DESIGN §12)."""
import sys

from qpass.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
