"""`python -m seqbert ARGS` = the `seqbert` command (under mimalloc where available, see seqbert.malloc)."""

import sys

from seqbert.malloc import main

sys.exit(main())
