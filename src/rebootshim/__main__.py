import sys

from rebootshim.cli import main

sys.exit(main())
