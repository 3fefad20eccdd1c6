import sys

from avsr.cli import main

sys.exit(main())
