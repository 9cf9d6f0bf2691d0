import sys

from oxyd.cli import main

sys.exit(main())
