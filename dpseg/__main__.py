import sys

from dpseg.commands import main

sys.exit(main())
