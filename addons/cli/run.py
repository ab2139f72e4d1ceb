"""``awsgate run``: the gateway chain in a mitmdump-like master with the right settings.

Unlike ``mitmdump -s addons/gateway.py``, the chain is added directly rather
than as a watched script, so an edit to the script file can never unload the
gateway's checks while the proxy keeps serving.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from addons.cli import common


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("run", help="run the gateway (a proxy on --port)")
    common.add_config_argument(parser)
    parser.add_argument("--port", type=int, default=8080, help="proxy port (default 8080)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="listen address (default 127.0.0.1; 0.0.0.0 for all)"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="log one line per flow (bodies are never printed)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    gateway_config = common.load_config(args)
    return asyncio.run(_serve(gateway_config.path, args.port, args.host, args.verbose))


async def _serve(config_path: os.PathLike[str], port: int, host: str, verbose: bool) -> int:
    # Imported here: mitmproxy takes seconds to import, and every other command skips it.
    from mitmproxy import exceptions, options
    from mitmproxy.tools.dump import DumpMaster

    from addons import gateway

    opts = options.Options(listen_host=host, listen_port=port)
    master = DumpMaster(opts, with_termlog=True, with_dumper=verbose)
    master.addons.add(*gateway.addons)
    try:
        opts.update(awsgate_config=str(config_path))
    except exceptions.OptionsError as exc:
        raise common.CommandError(str(exc).removeprefix("awsgate: ")) from exc
    await master.run()
    return 0
