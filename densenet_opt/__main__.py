import sys

from densenet_opt.cli import main

if __name__ == "__main__":  # not when a spawned process (multiprocessing) imports it
    sys.exit(main())
