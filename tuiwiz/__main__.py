import sys

from tuiwiz.cli.main import main

sys.exit(main())
