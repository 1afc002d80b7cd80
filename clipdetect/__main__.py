import sys

from clipdetect.cli.main import main

sys.exit(main())
