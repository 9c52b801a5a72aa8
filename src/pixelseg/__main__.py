import os
import sys

from pixelseg.cli import main
from pixelseg.engine.distributed import exit_process

code = main()
if "RANK" in os.environ and os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1"):
    exit_process(code)  # a torchrun worker: see exit_process for why
sys.exit(code)
