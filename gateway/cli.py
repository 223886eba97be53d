"""The `order-gateway` command: `demo`, `serve` and `check-config`."""

from __future__ import annotations

import argparse
import sys

from gateway.contract.settings import SettingsError, load_settings

EXIT_CONFIG_INVALID = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="order-gateway",
                                     description="Resilient self-service order gateway")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="simulators + gateway, in memory, nothing to set up")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--access-log", action="store_true",
                      help="print a line per request (off, so that the banner stays in view)")

    serve = commands.add_parser("serve", help="production mode")
    serve.add_argument("--config", help="YAML settings file (also GATEWAY_CONFIG)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="processes sharing the port")

    check = commands.add_parser("check-config", help="validate a settings file")
    check.add_argument("file")
    return parser


def _check_config(path: str) -> int:
    try:
        # The file alone is checked: the answer must not depend on the caller's environment.
        load_settings(path, env={})
    except SettingsError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG_INVALID
    print(f"{path}: valid")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from gateway.server import serve_forever

    try:
        settings = load_settings(args.config, overrides={
            ("server", "host"): args.host, ("server", "port"): args.port,
            ("server", "workers"): args.workers})
    except SettingsError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG_INVALID
    return serve_forever(settings)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "demo":
        from gateway.demo import run_demo

        return run_demo(args.port, access_log=args.access_log)
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
