"""`rbee`: parse the command line, run one command, print one clear line on failure."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rbee import __version__
from rbee.api.workers import REPACK_SETTINGS
from rbee.cli.output import fail
from rbee.config.hive_keys import DEFAULT_HIVE_PORT
from rbee.config.keys import SCOPES
from rbee.config.settings import DEFAULT_QUEEN_PORT, Paths
from rbee.errors import RbeeError
from rbee.models.catalog import DEFAULT_MODEL_ID, FORMATS
from rbee.sweep.options import add_sweep_parser

__all__ = ["build_parser", "main"]


@dataclass(frozen=True)
class _lazy:
    """A command's handler, imported when the command runs: `rbee hive status` need not import
    the queen's server, nor `rbee --help` anything at all."""

    module: str
    name: str

    def __call__(self, args: argparse.Namespace, paths: Paths) -> int:
        handler = getattr(importlib.import_module(f"rbee.cli.{self.module}"), self.name)
        status: int = handler(args, paths)
        return status


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def _at_least(lowest: int) -> Callable[[str], int]:
    """An argparse type: an integer of `lowest` or more."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest}, got {value}")
        return value

    return parse


_positive = _at_least(1)
_count = _at_least(0)


def _add_worker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        default="auto",
        help="llamacpp, mlx, exllamav2 or auto (default: picked by the hive's hardware)",
    )
    p.add_argument(
        "--device", default="auto", help="cpu, cuda:N, metal:0 or auto (default: the best there)"
    )
    p.add_argument("--ctx-size", type=_positive, default=4096, help="context tokens (4096)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    p.add_argument(
        "--embeddings",
        action="store_true",
        help="load the model for /v1/embeddings (the worker then serves nothing else)",
    )
    p.add_argument(
        "--cpu-repack",
        choices=REPACK_SETTINGS,
        default="auto",
        help="llama.cpp's weight repacking for the CPU (default auto: off on CPUs with AMX, "
        "whose repacking crashes llama.cpp; on elsewhere)",
    )
    p.add_argument(
        "--max-queued",
        type=_count,
        default=8,
        help="requests the worker holds waiting behind the one it generates; more get 503 (8)",
    )
    p.add_argument(
        "--max-queued-tokens",
        type=_count,
        default=0,
        help="prompt tokens the worker holds waiting; more get 503 (default: 4 contexts)",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 seconds or more, got {text}")
    return value


def _timeout(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _add_limit_options(p: argparse.ArgumentParser, *, queues: bool = True) -> None:
    """The queen's limits (rbee.config.limits_file: flags win over RBEE_* and rbee.toml)."""
    if queues:  # `rbee up` has them as worker options already: there they set both
        p.add_argument(
            "--max-queued",
            type=_count,
            help="requests a worker holds waiting behind the one it generates; more get 503 (8)",
        )
        p.add_argument(
            "--max-queued-tokens",
            type=_count,
            help="prompt tokens a worker holds waiting; more get 503 (default: 4 contexts)",
        )
    p.add_argument(
        "--request-timeout",
        type=_timeout,
        metavar="SECONDS",
        help="seconds a request may take in all, queueing and generation (600)",
    )
    p.add_argument(
        "--load-timeout",
        type=_timeout,
        metavar="SECONDS",
        help="seconds a request waits for its model to load on demand (300)",
    )
    p.add_argument(
        "--keepalive",
        type=_timeout,
        metavar="SECONDS",
        help="seconds between SSE comments to a stream waiting for its model to load (2)",
    )
    p.add_argument(
        "--no-autoload",
        dest="autoload",
        action="store_const",
        const=False,
        help="a request for a stored model without a worker gets 404 instead of loading it",
    )
    p.add_argument(
        "--idle-ttl",
        type=_seconds,
        metavar="SECONDS",
        help="unload a worker idle this long; the next request loads it again (900; 0: never)",
    )
    p.add_argument(
        "--cors-origin",
        dest="cors_origins",
        action="append",
        metavar="ORIGIN",
        help="let web pages of ORIGIN (scheme://host[:port], or * for any page) call the queen "
        "from a browser (repeatable; default: none)",
    )
    if not queues:
        p.set_defaults(max_queued=None, max_queued_tokens=None)


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="listen address (default 127.0.0.1; others need --api-key)",
    )
    p.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_QUEEN_PORT,
        help=f"listen port (default {DEFAULT_QUEEN_PORT})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = argparse.ArgumentParser(
        prog="rbee", description="Every machine you can ssh into, one OpenAI-compatible endpoint."
    )
    parser.add_argument("--version", action="version", version=f"rbee {__version__}")
    parser.add_argument(
        "--config-dir", help="config directory (default: $RBEE_CONFIG_DIR or ~/.config/rbee)"
    )
    parser.add_argument(
        "--data-dir",
        help="data directory: models, logs, pid files (default: "
        "$RBEE_DATA_DIR or ~/.local/share/rbee)",
    )
    parser.add_argument(
        "--queen",
        metavar="URL",
        default=os.environ.get("RBEE_QUEEN_URL"),
        help=f"queen URL (default: the running queen, else http://127.0.0.1:{DEFAULT_QUEEN_PORT})",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("RBEE_API_KEY"),
        help="API key for the queen (default: $RBEE_API_KEY)",
    )
    parser.add_argument(
        "--hives",
        metavar="PATH",
        default=os.environ.get("RBEE_HIVES") or None,
        help="hives.conf to read (default: $RBEE_HIVES or CONFIG_DIR/hives.conf)",
    )
    parser.add_argument(
        "--inventory",
        metavar="PATH",
        help="groups of hives (default: $RBEE_INVENTORY or CONFIG_DIR/inventory.yaml, if any)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="run the queen, a local hive and a model in the foreground")
    _add_serve_options(up)
    up.add_argument(
        "--model", default=DEFAULT_MODEL_ID, help=f"model to serve (default {DEFAULT_MODEL_ID})"
    )
    _add_worker_options(up)
    _add_limit_options(up, queues=False)
    up.set_defaults(handler=_lazy("daemons", "up"))

    queen = commands.add_parser("queen", help="start, stop or inspect the queen daemon")
    queen_cmds = queen.add_subparsers(dest="queen_command", required=True, metavar="ACTION")
    start = queen_cmds.add_parser("start", help="start the queen in the background")
    _add_serve_options(start)
    start.add_argument(
        "--model", action="append", default=[], help="model to start a worker for (repeatable)"
    )
    _add_limit_options(start)
    start.set_defaults(handler=_lazy("daemons", "queen_start"))
    queen_cmds.add_parser("stop", help="stop the queen and everything it started").set_defaults(
        handler=_lazy("daemons", "queen_stop")
    )
    queen_cmds.add_parser(
        "status", help="is the queen running, and what does it serve"
    ).set_defaults(handler=_lazy("daemons", "queen_status"))
    run = queen_cmds.add_parser("run", help="run the queen in the foreground (what start runs)")
    _add_serve_options(run)
    run.add_argument("--model", action="append", default=[], help=argparse.SUPPRESS)
    _add_limit_options(run)
    run.set_defaults(handler=_lazy("daemons", "queen_run"))

    worker = commands.add_parser("worker", help="start, list and stop workers")
    worker_cmds = worker.add_subparsers(dest="worker_command", required=True, metavar="ACTION")
    spawn = worker_cmds.add_parser("spawn", help="start a worker for a model")
    spawn.add_argument("--model", required=True, help="model id, e.g. smollm2-135m")
    spawn.add_argument("--hive", default="localhost", help="hive alias (default: this machine)")
    _add_worker_options(spawn)
    spawn.set_defaults(handler=_lazy("remote", "worker_spawn"))
    worker_cmds.add_parser("list", help="list workers").set_defaults(
        handler=_lazy("remote", "worker_list")
    )
    stop = worker_cmds.add_parser("stop", help="stop a worker")
    stop.add_argument("worker_id", metavar="ID")
    stop.set_defaults(handler=_lazy("remote", "worker_stop"))
    restart = worker_cmds.add_parser(
        "restart", help="start a worker again now (also ends a crash-loop) and wait until it serves"
    )
    restart.add_argument("worker_id", metavar="ID")
    restart.set_defaults(handler=_lazy("remote", "worker_restart"))
    wrun = worker_cmds.add_parser("run", help="run a worker in the foreground (hives use this)")
    wrun.add_argument("--model", required=True)
    wrun.add_argument("--port", type=_port, default=0)
    _add_worker_options(wrun)
    wrun.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    wrun.add_argument("--lifeline-fd", type=int, help=argparse.SUPPRESS)
    wrun.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    wrun.set_defaults(handler=_lazy("roles", "worker_run"))
    wstandby = worker_cmds.add_parser(
        "standby",
        help="wait, imported and ready, for a hive to hand over a worker to run (hives use this)",
    )
    wstandby.add_argument(
        "--engine", default="llamacpp", help="the engine whose library to import (llamacpp)"
    )
    wstandby.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    wstandby.set_defaults(handler=_lazy("roles", "worker_standby"))

    model = commands.add_parser("model", help="models in the catalog and the store")
    model_cmds = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    mlist = model_cmds.add_parser("list", help="list known and stored models, per format")
    mlist.add_argument("--hive", help="list a started hive's store instead (via the queen)")
    mlist.set_defaults(handler=_lazy("models", "model_list"))
    mimport = model_cmds.add_parser(
        "import", help="copy a GGUF file or a model folder (mlx, exl2, gptq) into the store"
    )
    mimport.add_argument("path", metavar="PATH", help="a .gguf file or a model folder")
    mimport.add_argument("--id", help="model id to store it as (default: from the name)")
    mimport.add_argument("--format", choices=FORMATS, help="the model's format (default: detected)")
    mimport.add_argument("--force", action="store_true", help="replace a stored artifact")
    mimport.set_defaults(handler=_lazy("models", "model_import"))
    mdownload = model_cmds.add_parser(
        "download", help="download a model from the Hugging Face hub ($HF_ENDPOINT, $HF_TOKEN)"
    )
    mdownload.add_argument(
        "spec", metavar="REPO[:FILE]", help="owner/name for a model folder, owner/name:FILE.gguf"
    )
    mdownload.add_argument("--id", help="model id to store it as (default: from the repo name)")
    mdownload.add_argument("--revision", default="main", help="branch, tag or commit (main)")
    mdownload.add_argument(
        "--format", choices=FORMATS, help="the model's format (default: detected)"
    )
    mdownload.add_argument("--force", action="store_true", help="replace a stored artifact")
    mdownload.set_defaults(handler=_lazy("models", "model_download"))

    hive = commands.add_parser("hive", help="the machines in hives.conf")
    hive_cmds = hive.add_subparsers(dest="hive_command", required=True, metavar="ACTION")
    hive_cmds.add_parser("list", help="list the hives in hives.conf").set_defaults(
        handler=_lazy("hives", "hive_list")
    )
    trust = hive_cmds.add_parser("trust", help="show a hive's host key and trust it")
    trust.add_argument("alias", metavar="ALIAS")
    trust.add_argument(
        "--yes",
        action="store_true",
        help="trust a new hive's key without asking (never a changed one)",
    )
    trust.add_argument(
        "--replace-changed-key",
        action="store_true",
        help="the hive's key changed and you checked the new one on the machine: remove the old "
        "key from known_hosts and trust the new one",
    )
    trust.set_defaults(handler=_lazy("hive_ssh", "hive_trust"))
    status = hive_cmds.add_parser("status", help="connect to hives at once, show their facts")
    status.add_argument(
        "alias",
        metavar="ALIAS",
        nargs="*",
        help="hives to read (default: every hive in hives.conf)",
    )
    status.add_argument(
        "--group", action="append", default=[], metavar="NAME", help="a group's hives (repeatable)"
    )
    status.set_defaults(handler=_lazy("hive_ssh", "hive_status"))
    install = hive_cmds.add_parser("install", help="install rbee on a hive over SSH (offline)")
    install.add_argument("alias", metavar="ALIAS")
    install.set_defaults(handler=_lazy("hive_install", "hive_install"))
    uninstall = hive_cmds.add_parser("uninstall", help="remove what install put on a hive")
    uninstall.add_argument("alias", metavar="ALIAS")
    uninstall.add_argument("--yes", action="store_true", help="remove it without asking")
    uninstall.set_defaults(handler=_lazy("hive_install", "hive_uninstall"))
    hstart = hive_cmds.add_parser("start", help="have the queen start a hive over SSH")
    hstart.add_argument("alias", metavar="ALIAS")
    hstart.set_defaults(handler=_lazy("remote", "hive_start"))
    hstop = hive_cmds.add_parser("stop", help="have the queen stop a hive and its workers")
    hstop.add_argument("alias", metavar="ALIAS")
    hstop.set_defaults(handler=_lazy("remote", "hive_stop"))
    hrun = hive_cmds.add_parser("run", help="run a hive in the foreground (the queen does this)")
    hrun.add_argument("--port", type=_port, default=DEFAULT_HIVE_PORT, help="loopback port")
    hrun.add_argument(
        "--lease",
        type=float,
        default=0.0,
        help="be gone, workers included, within this many seconds of the last heartbeat line "
        "on stdin (0: no lease)",
    )
    hrun.add_argument("--name", default="localhost", help="the hive's name in reports")
    hrun.add_argument(
        "--standby",
        action="store_true",
        help="keep a worker process started ahead of need (models loaded on demand start sooner)",
    )
    hrun.set_defaults(handler=_lazy("roles", "hive_run"))

    config = commands.add_parser("config", help="check rbee's configuration files")
    config_cmds = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_cmds.add_parser(
        "check", help="check hives.conf and the inventory without connecting anywhere"
    ).set_defaults(handler=_lazy("hives", "config_check"))
    show = config_cmds.add_parser("show", help="print a hive's settings as ssh resolves them")
    show.add_argument("alias", metavar="ALIAS")
    show.set_defaults(handler=_lazy("hives", "config_show"))

    job = commands.add_parser("job", help="watch, list and cancel the queen's jobs")
    job_cmds = job.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    job_cmds.add_parser("list", help="running and recent jobs").set_defaults(
        handler=_lazy("jobs", "job_list")
    )
    watch = job_cmds.add_parser("watch", help="replay a job's progress and follow it to its end")
    watch.add_argument("job_id", metavar="ID")
    watch.set_defaults(handler=_lazy("jobs", "job_watch"))
    cancel = job_cmds.add_parser("cancel", help="cancel a running job")
    cancel.add_argument("job_id", metavar="ID")
    cancel.set_defaults(handler=_lazy("jobs", "job_cancel"))

    tui = commands.add_parser("tui", help="the fleet's dashboard in the terminal (keys: ?)")
    tui.add_argument(
        "--once", action="store_true", help="print one snapshot as text and exit (for scripts)"
    )
    tui.add_argument("--width", type=_positive, default=None,
                     help="--once: fit the tables in this many columns, cutting long cells "
                          "(default: as wide as they need, nothing cut)")  # fmt: skip
    tui.set_defaults(handler=_lazy("tui", "tui"))

    apply = commands.add_parser(
        "apply", help="make the fleet what a playbook says (models on hives, replicas, policies)"
    )
    apply.add_argument("playbook", metavar="PLAYBOOK", help="a playbook YAML file")
    apply.add_argument(
        "--check",
        action="store_true",
        help="only show the plan; exit 0 if nothing would change, 2 if something would",
    )
    apply.add_argument(
        "--diff", action="store_true", help="show, per hive, what the playbook wants and what runs"
    )
    apply.set_defaults(handler=_lazy("apply", "apply"))

    key = commands.add_parser("key", help="the queen's API keys: scopes, limits, revocation")
    key_cmds = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    kadd = key_cmds.add_parser("add", help="create a key and print it (once: it is not stored)")
    kadd.add_argument("name", metavar="NAME", help="who the key is for (shown in the audit log)")
    kadd.add_argument(
        "--scope",
        action="append",
        choices=SCOPES,
        help="what the key may do (repeatable; default: inference)",
    )
    kadd.add_argument("--rpm", type=_positive, help="requests a minute the key may make")
    kadd.add_argument("--concurrent", type=_positive, help="requests the key may have in flight")
    kadd.set_defaults(handler=_lazy("keys", "key_add"))
    key_cmds.add_parser("list", help="the keys, their scopes and limits").set_defaults(
        handler=_lazy("keys", "key_list")
    )
    krevoke = key_cmds.add_parser("revoke", help="remove a key; the queen refuses it at once")
    krevoke.add_argument("key", metavar="NAME", help="the key's name (or id)")
    krevoke.set_defaults(handler=_lazy("keys", "key_revoke"))

    audit = commands.add_parser("audit", help="check and read the audit log")
    audit_cmds = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    averify = audit_cmds.add_parser("verify", help="check the hash chain (exit 1 if broken)")
    averify.add_argument("--file", metavar="PATH", help="the log (default DATA_DIR/audit.jsonl)")
    averify.add_argument(
        "--expect", metavar="HASH", help="a hash recorded earlier that must still be in the chain"
    )
    averify.set_defaults(handler=_lazy("audit", "audit_verify"))
    atail = audit_cmds.add_parser("tail", help="print the last entries")
    atail.add_argument("--file", metavar="PATH", help="the log (default DATA_DIR/audit.jsonl)")
    atail.add_argument("-n", "--lines", type=_positive, default=20, help="how many (20)")
    atail.set_defaults(handler=_lazy("audit", "audit_tail"))

    infer = commands.add_parser("infer", help="stream one answer to stdout")
    infer.add_argument("--model", default=DEFAULT_MODEL_ID)
    infer.add_argument("--prompt", required=True)
    infer.add_argument("--max-tokens", type=_positive)
    infer.add_argument("--temperature", type=float)
    infer.add_argument("--seed", type=int)
    infer.set_defaults(handler=_lazy("remote", "infer"))

    add_sweep_parser(commands, _lazy("sweep", "sweep"))
    return parser


_DAEMONS = {
    _lazy("daemons", "queen_run"),
    _lazy("roles", "worker_run"),
    _lazy("roles", "worker_standby"),
    _lazy("roles", "hive_run"),
}


def _configure_logging(verbose: bool, handler: object) -> None:
    # Daemons log with timestamps to their log files; commands say only what goes wrong.
    daemon = handler in _DAEMONS
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO if daemon else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if daemon else "rbee: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose, args.handler)
    if args.command == "up" and not args.verbose:
        logging.getLogger("rbee").setLevel(logging.INFO)
    try:
        paths = Paths.resolve(config_dir=args.config_dir, data_dir=args.data_dir)
        status: int = args.handler(args, paths)
    except RbeeError as err:
        return fail(str(err))
    except KeyboardInterrupt:
        return 130
    return status
