"""``python -m sparkdl.jobs --path STAGE`` prints the file to give spark-submit; ``--list`` prints every stage's."""
import argparse
import sys

from sparkdl.jobs import STAGES, path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sparkdl.jobs",
        description="The spark-submit entry points shipped inside the sparkdl package, e.g. "
        'spark-submit --master spark://HOST:7077 "$(python -m sparkdl.jobs --path train)" --features ... --output ...',
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--path", choices=STAGES, metavar="STAGE", help=f"print the job file of STAGE ({', '.join(STAGES)})")
    which.add_argument("--list", action="store_true", help="print 'stage<TAB>file' for every stage")
    args = parser.parse_args(argv)
    if args.list:
        for stage in STAGES:
            print(f"{stage}\t{path(stage)}")
    else:
        print(path(args.path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
