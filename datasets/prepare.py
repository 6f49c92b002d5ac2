"""Prepare an interaction dataset for BERT4Rec: the same as `seqbert data prepare ...`.

python datasets/prepare.py ml-1m --data-dir /path/to/data --out runs/data/ml-1m
python datasets/prepare.py custom --interactions log.csv --user-col u --item-col i --time-col t --out OUT
"""

import sys

from seqbert.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "prepare", *sys.argv[1:]]))
