"""`mylm export hf` and `mylm import hf`: runs to and from Hugging Face `transformers`.

    mylm export hf RUN_DIR OUT_DIR [--step N] [--dtype float32|bfloat16] [--max-shard-size 5GB] [--overwrite]
        a checkpoint as a transformers model directory (config.json, model.safetensors,
        generation_config.json, tokenizer.json, tokenizer_config.json with the chat template)
    mylm import hf HF_DIR OUT_RUN [--overwrite]
        a local transformers checkpoint (GPT-2, Llama, Qwen3, StableLM, Mixtral, Qwen3-MoE) as a
        MyLM run that generate, sft and pretrain --continue accept

A model, checkpoint or tokenizer without an exact counterpart is one line naming what has
none (mylm_jax/interop/; docs/interop.md has the tables).
"""

from __future__ import annotations

from mylm_jax.cli.common import HelpFormatter, quiet_libraries


def add_parser(subparsers) -> None:
    e = subparsers.add_parser("export", help="a run as another library's model (Hugging Face)",
                              formatter_class=HelpFormatter)
    hf = e.add_subparsers(dest="export_command", required=True).add_parser(
        "hf", help="a checkpoint as a transformers model directory", formatter_class=HelpFormatter)
    hf.add_argument("run_dir", metavar="RUN_DIR", help="a pretrain or sft run directory")
    hf.add_argument("out_dir", metavar="OUT_DIR", help="the transformers directory to write (new or empty)")
    hf.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    hf.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="the weights' dtype")
    hf.add_argument("--max-shard-size", default="5GB",
                    help="larger weights are split into files of at most this size, with an index")
    hf.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT_DIR")
    i = subparsers.add_parser("import", help="another library's checkpoint as a MyLM run (Hugging Face)",
                              formatter_class=HelpFormatter)
    hf = i.add_subparsers(dest="import_command", required=True).add_parser(
        "hf", help="a local transformers checkpoint as a MyLM run directory", formatter_class=HelpFormatter)
    hf.add_argument("hf_dir", metavar="HF_DIR", help="a transformers directory (config.json, tokenizer.json, "
                                                     "*.safetensors)")
    hf.add_argument("out_run", metavar="OUT_RUN", help="the run directory to write")
    hf.add_argument("--overwrite", action="store_true", help="delete an earlier run in OUT_RUN first")


def cmd_export(args) -> None:
    from mylm_jax.interop.architectures import ARCHITECTURES
    from mylm_jax.interop.export import export_run
    from mylm_jax.interop.safetensors_files import parse_size

    arch, step = export_run(args.run_dir, args.out_dir, args.step, args.dtype, parse_size(args.max_shard_size),
                            args.overwrite)
    print(f"exported {args.run_dir} step {step} as {ARCHITECTURES[arch]} ({args.dtype}) to {args.out_dir}")
    print(f'  transformers: AutoModelForCausalLM.from_pretrained("{args.out_dir}"), '
          f'AutoTokenizer.from_pretrained("{args.out_dir}")')


def cmd_import(args) -> None:
    from mylm_jax.interop.importer import import_run

    arch, cfg = import_run(args.hf_dir, args.out_run, args.overwrite)
    m = cfg.model
    print(f"imported {args.hf_dir} ({arch}: {m.n_layers} layers, d_model {m.d_model}, vocab {m.vocab_size}) "
          f"as the run {args.out_run} (step 0)")
    print(f"  mylm generate --checkpoint {args.out_run} --prompt \"...\"")
    print(f"  mylm pretrain --continue {args.out_run} data.path=DATA   (DATA prepared with "
          f"{args.out_run}/tokenizer.json)")


def run(args) -> None:
    quiet_libraries()
    cmd_export(args) if args.command == "export" else cmd_import(args)
