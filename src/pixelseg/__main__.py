import sys

from pixelseg.cli import main

sys.exit(main())
