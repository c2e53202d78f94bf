"""The `factory` command: thin; it parses arguments and calls the pieces that do the work."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from factory.config import ConfigError, PipelineConfig, load_config

DEFAULT_ROOT = "./factory-data"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="pipeline YAML file (e.g. pipelines/quickstart.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override applied after the YAML, e.g. --set dedup.threshold=0.85 (repeatable)",
    )


def _load(args: argparse.Namespace) -> PipelineConfig:
    overrides = list(args.overrides)
    address = getattr(args, "address", None)
    if address and args.command == "run":
        if str(address).startswith("http"):
            raise ConfigError(
                f"--address {address} is a dashboard (Jobs API) address: use `factory submit CONFIG --address {address}`,"
                " or give `factory run` the cluster's GCS address (auto, HEAD:6379 or ray://HEAD:10001)"
            )
        overrides.append(f"ray.address={address}")
    return load_config(args.config, overrides)


def _store(args: argparse.Namespace):
    from factory.store import Store

    root = args.root
    if root is None and getattr(args, "config", None):
        root = load_config(args.config).output_root
    return Store(root or os.environ.get("FACTORY_ROOT", DEFAULT_ROOT))


# --------------------------------------------------------------------------------------------- commands
def cmd_validate(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print(f"{args.config}: ok ({len(cfg.stages)} stages: {' -> '.join(cfg.stages)})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from factory.pipeline import run_pipeline, summary_table
    from factory.store import Store

    cfg = _load(args)
    runs = run_pipeline(cfg, progress=not args.no_progress, until=args.until)
    print()
    print(summary_table(runs, Store(cfg.output_root)))
    for r in runs:
        report = r.version.manifest.get("report")
        if report:
            print()
            print(report)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from factory.runtime import jobs

    cfg = load_config(args.config, args.overrides)
    job_id = jobs.submit(cfg, args.address, job_id=args.job_id)
    print(job_id)
    if args.wait:
        state = jobs.wait(args.address, job_id, timeout_s=args.timeout)
        print(jobs.logs(args.address, job_id))
        print(f"job {job_id}: {state}")
        return 0 if state == "SUCCEEDED" else 1
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from factory.runtime import jobs

    if args.action == "status":
        print(json.dumps(jobs.info(args.address, args.job_id), indent=2))
    elif args.action == "logs":
        print(jobs.logs(args.address, args.job_id), end="")
    elif args.action == "stop":
        print("stopped" if jobs.stop(args.address, args.job_id) else "not running")
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.action == "list":
        print(f"{'version':<28} {'kind':<12} {'stage':<17} {'rows':>8}  {'parent':<28} finished")
        for v in store.list():
            print(
                f"{v.id:<28} {v.kind:<12} {v.stage:<17} {v.num_rows:>8}  {str(v.parent or '-'):<28} "
                f"{v.manifest.get('finished_at', '')}"
            )
        staging = store.staging()
        if staging:
            print(f"\nunfinished (resumable, not versions): {', '.join(staging)}")
    elif args.action == "show":
        v = store.get(args.ids[0])
        m = dict(v.manifest)
        if not args.files:
            m["files"] = f"{len(m.get('files', {}))} files (use --files to list)"
        print(json.dumps(m, indent=2))
        for name in v.table_names():
            print(f"side table {name}: {v.read_table(name).num_rows} rows")
    elif args.action == "diff":
        print(json.dumps(store.diff(args.ids[0], args.ids[1]), indent=2))
    elif args.action == "lineage":
        chain = store.lineage(args.ids[0])
        for depth, v in enumerate(chain):
            c = v.manifest.get("counts", {})
            extra = "".join(f" {k}={val}" for k, val in (v.manifest.get("inputs") or {}).items())
            src = ""
            if v.parent is None:
                src = f"  <- raw input: {v.manifest.get('sources') or v.manifest.get('stage_config', {}).get('inputs')}"
            print(f"{'  ' * depth}{v.id}  [{v.kind}, {v.stage}] in={c.get('in')} out={c.get('out')}{extra}{src}")
    elif args.action == "verify":
        problems = store.get(args.ids[0]).verify()
        print("ok" if not problems else "\n".join(problems))
        return 1 if problems else 0
    return 0


def cmd_prompts(args: argparse.Namespace) -> int:
    from factory.prompts import list_refs, load_list, load_template, template_refs

    if args.action == "list":
        print(f"{'template':<28} {'id':<32} {'hash':<16} variables")
        for ref in template_refs():
            t = load_template(ref)
            print(f"{ref:<28} {t.id:<32} {t.hash[:16]:<16} {', '.join(t.variables)}")
        print(f"\n{'list':<28} items")
        for ref in list_refs():
            print(f"{ref:<28} {len(load_list(ref))}")
        return 0
    if not args.template:
        print("error: prompts show/render need a template, e.g. annotate/phi1_code", file=sys.stderr)
        return 2
    t = load_template(args.template)
    if args.action == "show":
        print(f"id: {t.id}\nhash: {t.hash}\nfile: {t.path}\nvariables: {', '.join(t.variables)}")
        print(t.path.read_text())
    else:  # render with sample values: what the model would be sent
        values = {k: v for k, v in (item.split("=", 1) for item in args.var)}
        for v in t.variables:
            values.setdefault(v, f"<{v}>")
        for m in t.render(**values):
            print(f"--- {m['role']}\n{m['content']}")
    return 0


def cmd_rows(args: argparse.Namespace) -> int:
    """Rows of a version (or one of its side tables) with every column: outputs with their provenance."""
    store = _store(args)
    v = store.get(args.version)
    table = v.read_table(args.table) if args.table else v.read()
    if args.id:
        import pyarrow.compute as pc

        table = table.filter(pc.equal(table.column("id"), args.id))
    for row in table.slice(0, args.limit).to_pylist():
        if "text" in row and isinstance(row["text"], str) and not args.full:
            row["text"] = row["text"][:200] + ("..." if len(row["text"]) > 200 else "")
        print(json.dumps(row, ensure_ascii=False, default=str))
    print(f"({min(args.limit, table.num_rows)} of {table.num_rows} rows)", file=sys.stderr)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from factory import probe_cli

    return probe_cli.main(args)


# --------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factory", description="textbook-factory: textbook-quality data, ranked by probes")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("run", help="run a pipeline (embedded local Ray unless an address is given)")
    _add_config_args(s)
    s.add_argument("--address", help="attach to an existing Ray cluster (e.g. auto or ray://HEAD:10001)")
    s.add_argument("--until", help="stop after this stage")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("validate", help="check a pipeline config without running anything")
    _add_config_args(s)
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser("submit", help="submit a pipeline to a Ray cluster as a Ray Job")
    _add_config_args(s)
    s.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    s.add_argument("--job-id", help="submission id (default: generated)")
    s.add_argument("--wait", action="store_true", help="wait for the job and print its logs")
    s.add_argument("--timeout", type=float, default=3600)
    s.set_defaults(fn=cmd_submit)

    s = sub.add_parser("jobs", help="follow a submitted Ray Job")
    s.add_argument("action", choices=["status", "logs", "stop"])
    s.add_argument("job_id")
    s.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    s.set_defaults(fn=cmd_jobs)

    s = sub.add_parser("versions", help="inspect the versioned store")
    s.add_argument("action", choices=["list", "show", "diff", "lineage", "verify"])
    s.add_argument("ids", nargs="*", help="version ids (a unique prefix or hash suffix is enough)")
    s.add_argument("--root", help=f"store root (default: the config's output_root, $FACTORY_ROOT or {DEFAULT_ROOT})")
    s.add_argument("--config", help="take the store root from this pipeline config")
    s.add_argument("--files", action="store_true", help="show: list every file with its checksum")
    s.set_defaults(fn=cmd_versions)

    s = sub.add_parser("rows", help="print rows of a version or side table as JSON lines (audit outputs)")
    s.add_argument("version")
    s.add_argument("--table", help="a side table: quarantine, duplicates, clusters, rejected, errors, ...")
    s.add_argument("--id", help="only the row with this id")
    s.add_argument("--limit", type=int, default=10)
    s.add_argument("--full", action="store_true", help="do not shorten the text column")
    s.add_argument("--root", help=f"store root (default: $FACTORY_ROOT or {DEFAULT_ROOT})")
    s.set_defaults(fn=cmd_rows)

    s = sub.add_parser("prompts", help="audit prompt templates: list ids and hashes, show, render")
    s.add_argument("action", choices=["list", "show", "render"])
    s.add_argument("template", nargs="?", help="e.g. annotate/phi1_code")
    s.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="render: a variable's value")
    s.set_defaults(fn=cmd_prompts)

    try:
        from factory import probe_cli

        probe_cli.add_parser(sub)
    except ImportError:
        pass
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "versions":
        need = {"list": 0, "show": 1, "diff": 2, "lineage": 1, "verify": 1}[args.action]
        if len(args.ids) != need:
            parser.error(f"versions {args.action} takes {need} version id(s)")
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a clear one-line message; -v for the traceback
        from factory.engines.base import BudgetExhausted, EngineUnavailable
        from factory.store import StoreError

        if isinstance(e, BudgetExhausted) and not args.verbose:
            print(f"stopped: {e}\nwhat was done is committed and cached; rerun with a larger budget to finish", file=sys.stderr)
            return 3
        if isinstance(e, EngineUnavailable) and not args.verbose:
            print(f"error: the LLM engine is unavailable: {e}\nfinished requests are cached; rerun to resume", file=sys.stderr)
            return 4
        if isinstance(e, StoreError) and not args.verbose:
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
