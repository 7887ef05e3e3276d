import sys

from gpucnn.cli import main

sys.exit(main())
