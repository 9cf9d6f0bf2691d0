import sys

from oxyd.cli.main import main

sys.exit(main())
