"""`recall` command line: train, evaluate, export, query, similar, data synth.

User-caused errors (`RecallError`, bad arguments) → one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from recall.errors import RecallError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + exits 2; keep it to one line
        raise RecallError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="recall", description="Two-tower retrieval trainer: train, evaluate, export, query.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train, evaluate on test and export (resumes an existing run dir)")
    t.add_argument("config", help="YAML config, e.g. configs/quickstart.yaml")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (repeatable), e.g. --set train.epochs=5")
    t.add_argument("--run-dir", help="where checkpoints, metrics and the export go (default runs/<config name>)")
    t.add_argument("--warm-start", metavar="RUN_DIR",
                   help="start a new run from an earlier run's weights, moved to this data's vocabulary (sets "
                        "warm_start.run_dir; README 'Retraining on fresh data')")
    t.add_argument("--workers", type=int, metavar="N",
                   help="train data-parallel on N local worker processes (MultiWorkerMirroredStrategy with loopback "
                        "TF_CONFIGs; README 'Training on several machines')")

    e = sub.add_parser("evaluate", help="re-evaluate a trained run directory (rewrites metrics.json, report.md)")
    e.add_argument("run_dir")
    e.add_argument("--index", dest="factory",
                   help="faiss index_factory string to evaluate with, e.g. HNSW32; an approximate index "
                        "also reports its recall@K against exact search and queries/s")

    x = sub.add_parser("export", help="(re)write a run's export bundle")
    x.add_argument("run_dir")
    x.add_argument("--out", help="output folder (default RUN_DIR/export)")

    q = sub.add_parser("query", help="top-K items for a history, from an export bundle")
    q.add_argument("export_dir")
    q.add_argument("--history", required=True, help="comma-separated raw item ids, oldest first")
    q.add_argument("-k", type=int, default=10)
    q.add_argument("--feature", action="append", default=[], metavar="NAME=VALUE",
                   help="a raw user feature value, e.g. zip_code=48067 (every feature of the model; NAME= = unknown)")
    q.add_argument("--include-seen", action="store_true", help="do not remove the history items")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")

    m = sub.add_parser("similar", help="the items most like an item (item-to-item), from an export bundle")
    m.add_argument("export_dir")
    m.add_argument("--item", required=True, help="a raw item id")
    m.add_argument("-k", type=int, default=10)
    m.add_argument("--json", action="store_true", help="print JSON instead of a table")

    d = sub.add_parser("data", help="dataset utilities")
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    s = dsub.add_parser("synth", help="write a synthetic interaction log (parquet or csv)")
    s.add_argument("--out", required=True, help="output file, .parquet or .csv")
    s.add_argument("--users", type=int, default=2000)
    s.add_argument("--items", type=int, default=1000)
    s.add_argument("--per-user", type=float, default=30.0, help="mean interactions per user")
    s.add_argument("--seed", type=int, default=0)
    return p


def _import_tensorflow_quietly(verbose: bool) -> None:
    """Import TensorFlow (and probe devices) with the C++ stderr silenced.

    Its absl start-up lines ("All log messages before absl::InitializeLog()", oneDNN, cuInit)
    ignore TF_CPP_MIN_LOG_LEVEL and would bury a one-line `error:`. Python errors still raise.
    """
    if verbose or "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()  # the cuInit probe logs an error line on GPU-less hosts
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cmd_train(args) -> int:
    import recall
    from recall.report import index_summary, metrics_table

    cfg = recall.load_config(args.config, args.overrides)
    if args.warm_start:
        from recall.config import WarmStartConfig

        cfg.warm_start = WarmStartConfig(run_dir=args.warm_start)
    run_dir = Path(args.run_dir or cfg.run_dir)
    if args.workers is not None:
        return _launch_workers(args, cfg, run_dir)
    _import_tensorflow_quietly(args.verbose)
    metrics = recall.train(cfg, run_dir)
    if "worker" in metrics:  # a non-chief worker of a TF_CONFIG cluster: the chief reports
        t = metrics["train"]
        print(f"worker {metrics['worker']}: {t['epochs']} epochs, {t['steps']} steps done; the chief wrote {run_dir}")
        return 0
    ks = cfg.eval.ks
    print()
    print(metrics_table({"model": metrics["test"], "most popular": metrics["most_popular"]["test"]}, ks))
    print()
    print(index_summary(metrics["index"], ks))
    t = metrics["train"]
    print(f"\n{t['epochs']} epochs, {t['seconds']} s training, {t['examples_per_sec']} examples/s")
    print(f"run directory: {run_dir}  (metrics.json, report.md, export/)")
    return 0


def _launch_workers(args, cfg, run_dir: Path) -> int:
    """`recall train --workers N`: N local workers, each `recall train` with its own TF_CONFIG."""
    from recall.distributed.launcher import launch
    from recall.pipeline import check_distributed_config

    if args.workers < 1:
        raise RecallError(f"--workers {args.workers}: give at least 1 worker process")
    check_distributed_config(cfg, args.workers)  # refused before any process starts
    train_args = [args.config, *[a for o in args.overrides for a in ("--set", o)], "--run-dir", str(run_dir.resolve())]
    if args.warm_start:
        train_args += ["--warm-start", args.warm_start]
    return launch(train_args, args.workers, run_dir, verbose=args.verbose)


def _cmd_evaluate(args) -> int:
    import recall
    from recall.report import index_summary, metrics_table

    metrics = recall.evaluate(args.run_dir, args.factory)
    ks = sorted(int(k.split("@")[1]) for k in metrics["test"]["filtered"] if k.startswith("hr@"))
    print(metrics_table({"model": metrics["test"], "most popular": metrics["most_popular"]["test"]}, ks))
    print()
    print(index_summary(metrics["index"], ks))
    print(f"report: {Path(args.run_dir) / 'report.md'}")
    return 0


def _cmd_export(args) -> int:
    import recall

    print(f"exported to {recall.export(args.run_dir, args.out)}")
    return 0


def _cmd_query(args) -> int:
    import json

    from recall.serving import Recommender

    history = [h.strip() for h in args.history.split(",") if h.strip()]
    rec = Recommender.load(args.export_dir)
    rows = rec.rows_of(history)
    unknown = [h for h, r in zip(history, rows, strict=True) if r < 0]
    if unknown:  # the tower would skip them anyway; dropping them here keeps recommend() from logging twice
        shown = ", ".join(unknown[:10]) + (f", … ({len(unknown)} in all)" if len(unknown) > 10 else "")
        print(f"note: ignored {len(unknown)} history item id(s) unknown to the model: {shown}", file=sys.stderr)
        history = [h for h, r in zip(history, rows, strict=True) if r >= 0]
    features = _query_features(rec, args.feature)
    ids, scores = rec.recommend([history], k=args.k, exclude_seen=not args.include_seen,
                                features=features, return_scores=True)
    if args.json:
        print(json.dumps({"items": ids[0], "scores": scores[0]}))
    else:
        print(f"{'rank':>4}  {'item':>10}  score")
        for r, (i, s) in enumerate(zip(ids[0], scores[0], strict=True), 1):
            print(f"{r:>4}  {i!s:>10}  {s:.4f}")
    return 0


def _cmd_similar(args) -> int:
    import json

    from recall.similar import SimilarItems

    ids, scores = SimilarItems.load(args.export_dir).similar([args.item.strip()], k=args.k)
    if args.json:
        print(json.dumps({"item": args.item.strip(), "items": ids[0], "scores": scores[0]}))
    else:
        print(f"{'rank':>4}  {'item':>10}  score")
        for r, (i, s) in enumerate(zip(ids[0], scores[0], strict=True), 1):
            print(f"{r:>4}  {i!s:>10}  {s:.4f}")
    return 0


def _query_features(rec, given_args: list[str]) -> dict | None:
    """--feature NAME=VALUE (raw values, e.g. zip_code=48067) → {name: value} for every feature of the model.

    A feature the model has but the command does not give is an error naming it (`--feature NAME=`
    serves it as unknown, explicitly); values the model does not know are said on stderr and served
    as unknown, as unknown history ids are.
    """
    names = rec.feature_names
    given = {}
    for f in given_args:
        if "=" not in f:
            raise RecallError(f"--feature {f!r}: expected NAME=VALUE, e.g. --feature gender=F")
        name, value = f.split("=", 1)
        given[name] = value
    extra = sorted(set(given) - set(names))
    if extra:
        raise RecallError(f"--feature {extra[0]}: not a feature of this model; it has {names or 'none'}")
    missing = [n for n in names if n not in given]
    if missing:
        raise RecallError(f"--feature {missing[0]}: missing; this model needs raw values for {', '.join(names)} "
                          f"(e.g. --feature {missing[0]}=VALUE, or --feature {missing[0]}= for unknown)")
    if not names:
        return None
    _, unknown = rec.feature_codes(given)
    if unknown.any():  # served as unknown either way; sending "" keeps recommend() from logging them twice
        shown = rec.unknown_values(given, unknown)
        print(f"note: served {len(shown)} user feature value(s) unknown to the model as 'unknown': "
              f"{', '.join(shown)}", file=sys.stderr)
        given = {n: ("" if unknown[0, i] else given[n]) for i, n in enumerate(names)}
    return given


def _cmd_data(args) -> int:
    from recall.data.readers import write_interactions
    from recall.data.synthetic import synthesize

    df = synthesize(num_users=args.users, num_items=args.items, interactions_per_user=args.per_user, seed=args.seed)
    write_interactions(df, args.out)
    print(f"wrote {len(df):,} interactions ({df.user_id.nunique():,} users, {df.item_id.nunique():,} items) to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    try:
        args = _parser().parse_args(argv)
        if argv is None and args.command == "train":  # a process of its own (not main([...]) in a test)
            from recall.hugepages import restart_with_huge_pages

            restart_with_huge_pages()  # returns unless it restarts this process (recall/hugepages.py)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")
        for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "faiss"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        if args.command in ("evaluate", "export", "query", "similar"):
            _import_tensorflow_quietly(args.verbose)
        handler = {"train": _cmd_train, "evaluate": _cmd_evaluate, "export": _cmd_export,
                   "query": _cmd_query, "similar": _cmd_similar, "data": _cmd_data}[args.command]
        return handler(args)
    except RecallError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; `recall train` on the same run directory resumes from the last checkpoint",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
