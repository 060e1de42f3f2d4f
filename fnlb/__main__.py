import sys

from fnlb.cli import main

sys.exit(main())
