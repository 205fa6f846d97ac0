"""Merge COCO instances files that share their categories into one file.

    python tools/merge_coco.py ../shared/data/coco128/annotations/instances_{train,val}.json \
        --out runs/coco128_all/instances_all.json
"""

import argparse
import sys

from cspwrc.cli import add_debug_flag, guarded
from cspwrc.data.merge import merge_coco


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ann", nargs="+", help="COCO instances JSON files (same categories, disjoint ids)")
    parser.add_argument("--out", required=True, help="merged JSON to write")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    # Exit 2 for a bad or clashing input file (DataError names it), 3 when --out cannot be written.
    return guarded(lambda: print(merge_coco(args.ann, args.out)), args.debug)


if __name__ == "__main__":
    sys.exit(main())
