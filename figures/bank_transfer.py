"""Figure: the standard 'transfer' figure of the bank walk-through (tables of analyses/bank.py)."""

import sys

from _common import standard

if __name__ == "__main__":
    sys.exit(standard("transfer", analysis="bank"))
