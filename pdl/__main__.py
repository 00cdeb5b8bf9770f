"""Command line: ``python -m pdl doctor``, ``data``, ``grade`` (instructors) and ``serve`` (lecture 08)."""

from __future__ import annotations

import argparse
import sys

from pdl import grading, serve  # each subcommand's options live with it


def main(argv: list[str] | None = None) -> int:
    """Run the ``pdl`` command line; returns the exit status.

    Example:
        >>> main(["doctor"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(
        prog="python -m pdl", description="Helpers for the pdl course."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("doctor", help="print versions, the device and the mixed-precision policy")
    fetch = commands.add_parser("data", help="fetch and verify every dataset the course needs")
    fetch.add_argument("names", nargs="*", help="only these datasets (default: all)")
    grading.add_arguments(
        commands.add_parser("grade", help="run students' notebooks and grade each exercise")
    )
    serve.add_arguments(
        commands.add_parser(
            "serve", help="start the demo web app on an exported model (lecture 08)"
        )
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve.main(args)
    if args.command == "grade":
        return grading.run(args)

    if args.command == "doctor":
        from pdl.device import print_environment
        from pdl.store import data_root, mirror_dir

        print_environment()
        print(f"{'data root':<16}  {data_root()}")
        print(f"{'data mirror':<16}  {mirror_dir() or '(none; set PDL_DATA_MIRROR)'}")
        return 0

    from pdl.store import RESOURCES, data_root, extra_files, fetch_all, mirror_dir

    unknown = [name for name in args.names if name not in RESOURCES]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(RESOURCES)}")
    print(f"data root: {data_root()}")
    print(f"mirror:    {mirror_dir() or '(none)'}")
    failed = 0
    for name, (path, outcome) in fetch_all(args.names or None).items():
        if path is None and not RESOURCES[name].required and not args.names:
            print(
                f"[skipped] {name}: optional, only in the offline mirror ({RESOURCES[name].note})"
            )
        elif path is None:
            failed += 1
            print(f"\n[missing] {name}\n{outcome}\n")
        else:
            where = {
                "root": "already in the data root",
                "mirror": "copied from the mirror",
                "download": "downloaded",
            }[outcome]
            print(f"[ok] {name:<22} {where}, verified: {path}")
            extras = extra_files(RESOURCES[name], data_root())
            if extras:
                print(
                    f"     {len(extras)} other file(s) there are not part of it and were left alone, "
                    f"e.g. {extras[0]}"
                )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
