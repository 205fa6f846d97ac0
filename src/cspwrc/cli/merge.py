"""Merge COCO instances files that share their categories into one file.

    python tools/merge_coco.py ../shared/data/coco128/annotations/instances_{train,val}.json \
        --out runs/coco128_all/instances_all.json
"""

import argparse
import sys

from cspwrc.atomic import WriteError
from cspwrc.data.checks import DataError
from cspwrc.data.merge import merge_coco


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ann", nargs="+", help="COCO instances JSON files (same categories, disjoint ids)")
    parser.add_argument("--out", required=True, help="merged JSON to write")
    args = parser.parse_args(argv)
    try:
        out = merge_coco(args.ann, args.out)
    except (DataError, WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
