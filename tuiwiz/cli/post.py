"""Post-training commands: ``merge``, ``export``, ``chat`` and ``score``. Light at import: argparse only."""

from __future__ import annotations

import argparse
import sys

FORMATS = ("merged", "adapter", "gguf", "ollama", "onnx", "hub")
QUANTS = ("f16", "f32", "q8_0")


def add_commands(sub) -> None:
    merge = sub.add_parser("merge", help="merge a run's adapter into its base model (shard by shard, verified)")
    merge.add_argument("run", metavar="RUN", help="run id or run folder")
    merge.add_argument("--out", metavar="DIR", help="where the merged model goes (default: RUN/merged)")
    merge.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    merge.add_argument("--jsonl", action="store_true", help="report as JSON lines on stdout (for the app)")

    export = sub.add_parser("export", help="export a run's model: merged, adapter, gguf, ollama, onnx, hub")
    export.add_argument("run", metavar="RUN", help="run id or run folder")
    export.add_argument("--format", required=True, metavar="F", help="one of: " + ", ".join(FORMATS))
    export.add_argument("--out", metavar="DIR", help="where the export goes (default: RUN/export-F)")
    export.add_argument("--quant", default="f16", metavar="Q", help="gguf/ollama tensor type: f16, f32, q8_0")
    export.add_argument("--repo", metavar="ID", help="hub: the repository to push to (user/name)")
    export.add_argument("--private", action="store_true", help="hub: create the repository private")
    export.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    export.add_argument("--jsonl", action="store_true", help="report as JSON lines on stdout (for the app)")

    chat = sub.add_parser("chat", help="chat with a run's model in the terminal")
    chat.add_argument("run", metavar="RUN", help="run id, run folder, or a merged/exported model folder")
    chat.add_argument("--base", action="store_true", help="answer with the base model (adapter off)")
    chat.add_argument("--compare", action="store_true", help="answer each prompt with the base and the fine-tuned")
    chat.add_argument("--system", metavar="TEXT", help="a system message")
    chat.add_argument("--temperature", type=float, default=0.7, metavar="T", help="0 answers greedily (default 0.7)")
    chat.add_argument("--top-p", type=float, default=0.9, metavar="P", help="nucleus sampling (default 0.9)")
    chat.add_argument("--max-new-tokens", type=int, default=256, metavar="N", help="answer length cap (default 256)")
    chat.add_argument("--jsonl", action="store_true",
                      help="serve requests as JSON lines on stdin/stdout instead of a prompt (for the app)")

    score = sub.add_parser("score", help="score texts, or replies to a prompt, with a reward model run (task reward)")
    score.add_argument("run", metavar="RUN", help="run id or run folder of a reward model")
    score.add_argument("--text", action="append", metavar="TEXT", help="a whole text, scored as it is (repeatable)")
    score.add_argument("--prompt", metavar="P", help="a prompt; each --completion is scored as its reply")
    score.add_argument("--completion", action="append", metavar="C", help="a reply to --prompt (repeatable)")
    score.add_argument("--file", metavar="F", help='JSON lines (or JSON, CSV, Parquet): {"prompt", "completion"} or '
                       '{"text"} a record; one score a line, in order')
    score.add_argument("--jsonl", action="store_true",
                       help="load the model once and score JSON-line requests on stdin (for the app)")


def _print_progress(stage: str, done: int, total: int) -> None:
    print(f"\r{stage}: {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)


def _merge_jsonl(args: argparse.Namespace) -> int:
    from tuiwiz.post.jsonl import run_job
    from tuiwiz.post.merge import merge_run
    from tuiwiz.post.merge_plan import plan_merge

    def job(channel) -> dict:
        plan = plan_merge(args.run)
        channel.emit("plan", run=plan.source.run.run_id, method=plan.source.method, base=plan.source.base_model.name,
                     shards=len(plan.shards), base_mib=round(plan.base_bytes / 2**20, 1), note=plan.note)
        r = merge_run(plan, args.out, overwrite=args.overwrite, progress=channel.progress)
        return {"out": str(r.out), "max_diff": r.max_diff, "tolerance": r.tolerance, "changed_diff": r.changed_diff,
                "peak_rss_mb": r.peak_rss_mb, "verify_peak_rss_mb": r.verify_peak_rss_mb,
                "seconds": round(r.seconds + r.verify_seconds, 3), "notes": [r.note] if r.note else []}

    return run_job(job)


def _cmd_merge(args: argparse.Namespace) -> int:
    from tuiwiz.post.merge import merge_run
    from tuiwiz.post.merge_plan import plan_merge

    if args.jsonl:
        return _merge_jsonl(args)

    plan = plan_merge(args.run)
    print(f"merging {plan.source.method} adapter of {plan.source.run.run_id} into {plan.source.base_model.name} "
          f"({len(plan.shards)} shard(s), {plan.base_bytes / 2**20:.0f} MiB)", file=sys.stderr)
    if plan.note:
        print(f"note: {plan.note}", file=sys.stderr)
    result = merge_run(plan, args.out, overwrite=args.overwrite, progress=_print_progress)
    print(f"verified: logits match base + adapter within {result.max_diff:.2g} (tolerance {result.tolerance:.0e}); "
          f"the adapter moves them by up to {result.changed_diff:.3g}")
    print(f"peak memory {result.peak_rss_mb:.0f} MiB merging, {result.verify_peak_rss_mb:.0f} MiB verifying; "
          f"{result.seconds + result.verify_seconds:.1f} s")
    print(f"merged model: {result.out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from tuiwiz.post.export import export_run

    if args.jsonl:
        from tuiwiz.post.jsonl import run_job

        def job(channel) -> dict:
            r = export_run(args.run, args.format, args.out, quant=args.quant, repo=args.repo, private=args.private,
                           overwrite=args.overwrite, progress=channel.progress)
            return {"format": r.format, "location": r.location, "files": [str(f) for f in r.files],
                    "notes": list(r.notes), "seconds": r.seconds}

        return run_job(job)
    result = export_run(args.run, args.format, args.out, quant=args.quant, repo=args.repo, private=args.private,
                        overwrite=args.overwrite, progress=_print_progress)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{result.format}: {result.location}")
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from tuiwiz.post.chat import GenerationSettings, run_repl

    if args.jsonl:
        from tuiwiz.post.chat_server import run_jsonl

        return run_jsonl(args.run)
    settings = GenerationSettings(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens)
    return run_repl(args.run, settings=settings, system=args.system, base=args.base, compare=args.compare)


def _cmd_score(args: argparse.Namespace) -> int:
    from tuiwiz.post.score import command_items, reward_output, run_jsonl, score_items

    if args.jsonl:
        if args.text or args.prompt is not None or args.completion or args.file is not None:
            from tuiwiz.errors import UserError

            raise UserError("--jsonl reads what to score from its input", kind="input",
                            hint="leave out --text, --prompt, --completion and --file with --jsonl")
        return run_jsonl(args.run)
    output = reward_output(args.run)  # the run and the input are checked before the model loads
    items = command_items(args.text, args.prompt, args.completion, args.file)
    for value in score_items(output, items):
        print(f"{value:.4f}")
    return 0


def dispatch(args: argparse.Namespace) -> int | None:
    command = getattr(args, "command", None)
    if command == "merge":
        return _cmd_merge(args)
    if command == "export":
        return _cmd_export(args)
    if command == "chat":
        return _cmd_chat(args)
    if command == "score":
        return _cmd_score(args)
    return None
