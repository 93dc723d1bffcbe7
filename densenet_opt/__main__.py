import sys

from densenet_opt.cli import main

sys.exit(main())
