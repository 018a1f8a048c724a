import sys

from cai_aug.cli import main

sys.exit(main())
