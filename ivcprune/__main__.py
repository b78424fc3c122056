import sys

from ivcprune.cli import main

sys.exit(main())
