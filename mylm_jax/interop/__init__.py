"""Hugging Face interop: a MyLM run to a `transformers` model directory and back, exactly.

    mylm export hf RUN_DIR OUT_DIR     export.py     config.json, model.safetensors, tokenizer files
    mylm import hf HF_DIR OUT_RUN      importer.py   a transformers checkpoint as a MyLM run directory

One idea per module, imports one way (errors <- architectures, mapping, safetensors_files,
hf_tokenizer <- export, importer):

    errors.py             InteropError: what has no exact counterpart, in one line
    architectures.py      which transformers architecture computes a MyLM model's function
                          (GPT-2, Llama, Qwen3, StableLM, Mixtral, Qwen3-MoE), config.json both ways
    mapping.py            the tensor tables: MyLM parameter <-> transformers tensor, both ways
    safetensors_files.py  the weights' files: safetensors, sharded with an index
    hf_tokenizer.py       tokenizer.json both ways, tokenizer_config.json (chat template),
                          generation_config.json
    export.py, importer.py  the two commands
    reference.py          transformers as the reference (needs transformers and torch): the
                          comparisons of the proof and of scripts/hf_interop_report.py

The proof is tests/test_hf_interop.py: for every exportable variant, transformers' logits
equal MyLM's on a 512-token prompt, greedy generation and the chat template's ids match,
and import -> export is bit-exact. docs/interop.md has the tables and the measurements.
This package imports nothing when it is imported.
"""
