"""Bad input never costs a traceback: the corpus in tests/bad_inputs/ run through the CLIs as a user would.

Every malformed case must exit non-zero with ONE line on stderr that names the file / line / key,
and no Python traceback (unless HYDRA_FULL_ERROR=1). Inputs that look odd but are valid (BOM,
CRLF, quoted separators, duplicated ids, UTF-16 with data.encoding, a 1 MB text) must train.

Speed: a `python -m emotrain` process spends ~5 s importing torch/transformers before it reads
any data, so the cases run in ONE subprocess (`_batch_main`) that calls the real console-script
functions (`emotrain.__main__.main`, `predict_main`, `export_main`) once per case, with sys.argv
set, the process's stdout/stderr file descriptors redirected into per-case files, SystemExit
turned into the exit status and an escaping exception printed as Python would. The test
`test_batch_runner_matches_real_processes` re-runs a few cases as real processes and requires
the same exit status and stderr.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO_ROOT, quick, subprocess_env, train

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
REL = "tests/bad_inputs"  # as a user would type it, from the repository root
TESTS_DIR = Path(__file__).resolve().parent

# Overrides of every emotrain case: tiny and quick, so the valid ones train in about a second.
QUICK = quick("checkpoint.export=false", checkpoints=True)


def table(train_file: str, *extra: str, column: str = "label") -> list[str]:
    return ["data=table", f"data.train_file={train_file}", f"+data.tasks.emotion.column={column}", *extra]


# --------------------------------------------------------------------------- the batch runner (child process)


def _call(entry: str, argv: list[str]) -> int:
    """One command as its console script runs it; returns the exit status."""
    import traceback

    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    for module in list(sys.modules.values()):  # warnings shown once per process: show them again
        registry = getattr(module, "__warningregistry__", None)
        if isinstance(registry, dict):
            registry.clear()
    try:
        if entry == "emotrain":
            from emotrain.__main__ import main

            sys.argv = ["emotrain", *argv]
            main()
            return 0
        if entry == "predict":
            from emotrain.inference.cli import predict_main

            sys.argv = ["emotrain-predict", *argv]
            return int(predict_main(argv) or 0)
        if entry == "export":
            from emotrain.inference.cli import export_main

            sys.argv = ["emotrain-export", *argv]
            return int(export_main(argv) or 0)
        raise ValueError(f"unknown entry {entry}")
    except SystemExit as e:  # as the interpreter handles it at exit
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:  # an escaping exception: the interpreter prints the traceback, status 1
        traceback.print_exc()
        return 1


def _batch_main(spec_path: str) -> None:
    """Child process: run every case of the spec, each with its own stdout/stderr files."""
    spec = json.loads(Path(spec_path).read_text())
    out_dir = Path(spec["out_dir"])
    results = {}
    for case in spec["cases"]:
        env = dict(os.environ)
        os.environ.update(case.get("env", {}))
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        started = time.perf_counter()
        with open(out_dir / f"{case['name']}.out", "wb") as out, open(out_dir / f"{case['name']}.err", "wb") as err:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            try:
                rc = _call(case["entry"], case["argv"])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
        os.environ.clear()
        os.environ.update(env)
        results[case["name"]] = {"rc": rc, "seconds": round(time.perf_counter() - started, 2)}
        (out_dir / "results.json").write_text(json.dumps(results))


def run_batch(cases: list[Case], work: Path, timeout: int = 540) -> dict[str, Outcome]:
    """Run `cases` in one child process (cwd: the repository root); {name: Outcome}."""
    out_dir = work / "batch"
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "out_dir": str(out_dir),
        "cases": [{"name": c.name, "entry": c.entry, "argv": c.argv_for(work), "env": c.env} for c in cases],
    }
    (work / "spec.json").write_text(json.dumps(spec))
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); "
        "from test_bad_inputs import _batch_main; _batch_main(sys.argv[1])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(work / "spec.json")],
        cwd=REPO_ROOT,
        env=subprocess_env(work / "cache"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    results = json.loads((out_dir / "results.json").read_text()) if (out_dir / "results.json").exists() else {}
    assert proc.returncode == 0 and len(results) == len(cases), f"batch runner failed: {proc.stderr[-3000:]}"
    return {
        c.name: Outcome(
            results[c.name]["rc"],
            (out_dir / f"{c.name}.out").read_text(errors="replace"),
            (out_dir / f"{c.name}.err").read_text(errors="replace"),
            work / "runs" / c.name,
            results[c.name]["seconds"],
        )
        for c in cases
    }


@dataclass
class Outcome:
    rc: int
    out: str
    err: str
    run_dir: Path
    seconds: float


@dataclass
class Case:
    """One command. `expect`: fragments the error line must contain ({work} = the test's temp dir);
    valid=True: the command must succeed instead."""

    name: str
    argv: list[str]
    expect: list[str] = field(default_factory=list)
    entry: str = "emotrain"
    rc: int = 2
    valid: bool = False
    env: dict = field(default_factory=dict)
    run_dir: bool = True  # add hydra.run.dir=<work>/runs/<name>

    def argv_for(self, work: Path) -> list[str]:
        argv = [a.replace("{work}", str(work)) for a in self.argv]
        if self.entry == "emotrain":
            argv = [*QUICK, *argv, *([f"hydra.run.dir={work / 'runs' / self.name}"] if self.run_dir else [])]
        return argv


# --------------------------------------------------------------------------- the corpus

D = REL
DATA_CASES = [
    # every validation case of the table reader (emotrain/data/table.py), as a user meets it
    Case(
        "missing_file", table(f"{D}/no_such_file.csv"), [f"{D}/no_such_file.csv", "does not exist", "data.train_file"]
    ),
    Case("directory_as_file", table(D), ["is a directory", "data.train_file"]),
    Case("empty_file", table(f"{D}/empty.csv"), ["empty.csv is empty", "data.train_file"]),
    Case("header_only", table(f"{D}/header_only.csv"), ["header_only.csv has no data rows", "only a header line"]),
    Case(
        "duplicate_header", table(f"{D}/duplicate_header.csv"), ["duplicate_header.csv line 1", "'label' appears twice"]
    ),
    Case(
        "unquoted_separator",
        table(f"{D}/unquoted_separator.csv"),
        ["unquoted_separator.csv line 3", "expected 2 columns", "found 3", "quote"],
    ),
    Case(
        "unbalanced_quote", table(f"{D}/unbalanced_quote.csv"), ["unbalanced_quote.csv lines 3-5", "unbalanced quote"]
    ),
    Case(
        "wrong_text_column",
        table(f"{D}/wrong_text_column.csv"),
        ["wrong_text_column.csv", "no column 'text'", "data.text_column", "'sentence', 'label'"],
    ),
    Case(
        "wrong_label_column",
        table(f"{D}/valid_train.csv", column="emotion"),
        ["valid_train.csv", "no column 'emotion'", "data.tasks.emotion.column"],
    ),
    Case("empty_text", table(f"{D}/empty_text.csv"), ["empty_text.csv line 3", "empty text"]),
    Case("empty_label", table(f"{D}/empty_label.csv"), ["empty_label.csv line 3", "every row needs a label"]),
    Case(
        "latin1_bytes",
        table(f"{D}/latin1.csv"),
        ["latin1.csv line 3", "byte offset", "not valid utf-8", "data.encoding"],
    ),
    Case(
        "mixed_encodings",
        table(f"{D}/mixed_encodings.csv"),
        ["mixed_encodings.csv line 3", "not valid utf-8", "data.encoding"],
    ),
    Case(
        "utf16_without_encoding",
        table(f"{D}/utf16.csv"),
        ["utf16.csv", "UTF-16 byte-order mark", "data.encoding=utf-16"],
    ),
    Case(
        "utf16_without_bom",
        table(f"{D}/utf16_no_bom.csv"),
        ["utf16_no_bom.csv", "appears to be UTF-16", "data.encoding=utf-16-le"],
    ),
    Case(
        "gzip_named_csv",
        table(f"{D}/gzip_named_csv.csv"),
        ["gzip_named_csv.csv", "appears to be gzip-compressed", ".gz"],
    ),
    # data that would train a meaningless model
    Case("single_class", table(f"{D}/single_class.csv"), ["single_class.csv", "single class", "'joy'", "at least 2"]),
    Case(
        "nan_label_column",
        table(f"{D}/nan_label_column.csv"),
        ["nan_label_column.csv line 2", "'NaN', a missing-value marker"],
    ),
    Case(
        "invisible_text",
        table(f"{D}/invisible_text.csv"),
        ["invisible_text.csv line 3", "empty after normalisation", "zero-width"],
    ),
    Case(
        "text_column_is_label_column",
        table(f"{D}/valid_train.csv", "data.text_column=label"),
        ["data.text_column", "data.tasks.emotion.column", "'label'"],
    ),
    Case(
        "jsonl_duplicate_key",
        table(f"{D}/duplicate_key.jsonl"),
        ["duplicate_key.jsonl line 3", "'label' appears twice"],
    ),
    Case(
        "unknown_encoding",
        table(f"{D}/valid_train.csv", "data.encoding=klingon"),
        ["data.encoding='klingon'", "not a known text encoding"],
    ),
    Case(
        "one_example_class",
        table(f"{D}/one_example_class.csv"),
        ["one_example_class.csv", "class 'fear'", "only 1 example", "data.test_file"],
    ),
    Case(
        "ids_out_of_range",
        table(
            f"{D}/ids_out_of_range.csv", "+data.tasks.emotion.ids=true", "+data.tasks.emotion.labels=[joy,anger,fear]"
        ),
        ["ids_out_of_range.csv line 4", "label id 3", "0..2"],
    ),
    Case(
        "ids_not_integer",
        table(f"{D}/ids_not_integer.csv", "+data.tasks.emotion.ids=true"),
        ["ids_not_integer.csv line 3", "'anger' is not an integer id", "ids=false"],
    ),
    Case(
        "ids_negative",
        table(f"{D}/ids_negative.csv", "+data.tasks.emotion.ids=true"),
        ["ids_negative.csv line 3", "label id -1 is negative"],
    ),
    Case(
        "unknown_label",
        table(f"{D}/unknown_label.csv", "+data.tasks.emotion.labels=[joy,anger]"),
        ["unknown_label.csv line 3", "unknown label 'angry'", "data.tasks.emotion.labels"],
    ),
    Case(
        "val_label_unseen_in_train",
        table(f"{D}/valid_train.csv", f"data.val_file={D}/val_unseen_label.csv"),
        ["val_unseen_label.csv line 3", "'surprise'", "never occurs in the training split"],
    ),
    Case("unknown_extension", table(f"{D}/train.dat"), ["train.dat", "'.dat'", "data.format"]),
    Case(
        "unknown_format",
        table(f"{D}/valid_train.csv", "data.format=xlsx"),
        ["data.format='xlsx'", "not a known format"],
    ),
    Case("separator_too_long", table(f"{D}/valid_train.csv", "data.sep=::"), ["data.sep='::'", "single character"]),
    Case("separator_is_quote", table(f"{D}/valid_train.csv", "data.sep='\"'"), ["data.sep='\"'", "quote or newline"]),
    Case(
        "not_parquet",
        table(f"{D}/not_parquet.parquet"),
        ["not_parquet.parquet", "cannot read as Parquet", "data.format"],
    ),
    Case("empty_parquet", table(f"{D}/empty.parquet"), ["empty.parquet has no data rows"]),
    Case(
        "null_text_parquet", table(f"{D}/null_text.parquet"), ["null_text.parquet row 2", "nothing (null)", "not text"]
    ),
    Case("corrupt_gzip", table(f"{D}/corrupt.csv.gz"), ["corrupt.csv.gz", "cannot decompress"]),
    Case("bad_json_line", table(f"{D}/bad_json.jsonl"), ["bad_json.jsonl line 2", "not valid JSON"]),
    Case(
        "json_array_not_lines",
        table(f"{D}/json_array.json"),
        ["json_array.json line 1", "one JSON array", "JSON Lines"],
    ),
    Case(
        "jsonl_non_object",
        table(f"{D}/non_object.jsonl"),
        ["non_object.jsonl line 2", "expected a JSON object, found str"],
    ),
    Case("jsonl_missing_key", table(f"{D}/missing_key.jsonl"), ["missing_key.jsonl line 2", "no key 'label'"]),
    Case("jsonl_number_text", table(f"{D}/number_text.jsonl"), ["number_text.jsonl line 2", "a number (12), not text"]),
    Case("jsonl_null_text", table(f"{D}/null_text.jsonl"), ["null_text.jsonl line 2", "nothing (null)"]),
    Case(
        "jsonl_list_for_single_label",
        table(f"{D}/list_label_single.jsonl"),
        ["list_label_single.jsonl line 1", "2 labels", "data.tasks.emotion.multilabel=true"],
    ),
    Case("jsonl_boolean_label", table(f"{D}/bool_label.jsonl"), ["bool_label.jsonl line 1", "holds a boolean"]),
    # more files that would train silently wrong, or get a misleading diagnosis
    Case(
        "identical_texts",
        table(f"{D}/identical_texts.csv"),
        ["identical_texts.csv", "training texts are the same text", "data.text_column"],
    ),
    Case(
        "swapped_columns",
        table(f"{D}/swapped_columns.csv"),
        ["swapped_columns.csv", "classes occur once, as texts would", "columns swapped?"],
    ),
    Case("nul_byte", table(f"{D}/nul_byte.csv"), ["nul_byte.csv line 3", "a NUL character", "binary, corrupted"]),
    Case("utf32", table(f"{D}/utf32.csv"), ["utf32.csv", "UTF-32 byte-order mark", "data.encoding=utf-32"]),
    Case("zstd_named_csv", table(f"{D}/zstd_named_csv.csv"), ["zstd_named_csv.csv appears to be zstd-compressed"]),
    Case("png_named_csv", table(f"{D}/png_named_csv.csv"), ["png_named_csv.csv appears to be a PNG image"]),
    Case(
        "jsonl_key_case_variants",
        table(f"{D}/label_key_case.jsonl"),
        ["label_key_case.jsonl line 3", "keys 'label' and 'LABEL' differ only in case"],
    ),
    Case(
        "validation_file_is_the_training_file",
        table(f"{D}/valid_train.csv", f"data.val_file={D}/valid_train.csv"),
        ["data.val_file and data.train_file are the same file", "memorisation"],
    ),
    Case("symlink_loop", table("{work}/loop_a.csv"), ["loop_a.csv is a symbolic link that leads nowhere", "a loop"]),
    # the data=table config itself
    Case(
        "no_tasks",
        ["data=table", f"data.train_file={D}/valid_train.csv"],
        ["data.tasks is empty", "+data.tasks.emotion.column=label"],
    ),
    Case(
        "task_key_typo",
        ["data=table", f"data.train_file={D}/valid_train.csv", "+data.tasks.emotion.colum=label"],
        ["data.tasks.emotion", "unknown key(s) colum"],
    ),
    Case(
        "task_without_column",
        ["data=table", f"data.train_file={D}/valid_train.csv", "+data.tasks.emotion.multilabel=true"],
        ["data.tasks.emotion.column is not set"],
    ),
    Case(
        "labels_not_a_list",
        table(f"{D}/valid_train.csv", "+data.tasks.emotion.labels=joy"),
        ["data.tasks.emotion.labels must be a list"],
    ),
    Case(
        "labels_twice",
        table(f"{D}/valid_train.csv", "+data.tasks.emotion.labels=[joy,joy,anger]"),
        ["data.tasks.emotion.labels lists 'joy' twice"],
    ),
    Case("train_file_not_set", ["data=table"], ["data.train_file is not set"]),
    Case(
        "no_validation_split",
        table(f"{D}/valid_train.csv", "data.val_fraction=0"),
        ["no validation split", "data.val_file"],
    ),
    Case("goemotions_dir_missing", ["data=goemotions", f"data.dir={D}/no_such_dir"], ["no_such_dir"]),
]

CONFIG_CASES = [
    # composed by Hydra: wrong types, typos, unknown options, bad override syntax
    Case("wrong_type", ["trainer.epochs=abc"], ["trainer.epochs=abc", "could not be converted to Integer"]),
    Case("wrong_enum", ["precision.mode=fp8"], ["precision.mode=fp8", "expected one of [auto, fp32, fp16, bf16]"]),
    Case("wrong_bool", ["data=table", "data.header=maybe"], ["data.header=maybe", "not a valid bool"]),
    Case("key_typo", ["trainer.epoch=3"], ["trainer.epoch: no such key; did you mean trainer.epochs?"]),
    # `+key=value` adds a key Hydra would refuse: refused all the same, with the closest valid key
    Case("added_key_typo", ["+trainer.epoch=3"], ["trainer.epoch: no such key; did you mean trainer.epochs?"]),
    Case("added_top_level_typo", ["+seedd=3"], ["seedd: no such key; did you mean seed?"]),
    Case(
        "added_nested_typo", ["+trainer.early_stopping.patiense=2"], ["did you mean trainer.early_stopping.patience?"]
    ),
    Case(
        "key_of_another_option",
        ["backbone=minilm", "backbone.hidden_size=768"],
        ["backbone.hidden_size", "acts only with backbone=tiny"],
    ),
    Case("added_key_of_another_option", ["+loss.gamma=1"], ["loss.gamma", "acts only with loss=focal"]),
    Case("typo_of_another_options_key", ["data.dirr=x"], ["data.dirr", "did you mean data.dir", "data=goemotions"]),
    Case("selector_without_its_option", ["loss.kind=focal"], ["loss.kind=focal", "loss=focal"]),
    Case(
        "unquoted_special_character",
        ["data=table", "data.sep=;"],
        ["'data.sep=;'", "quote the value", "\"data.sep=';'\""],
    ),
    Case("unknown_option", ["backbone=bert_huge"], ["backbone/bert_huge", "local, minilm, tiny"]),
    Case("override_syntax", ["trainer.epochs=["], ["trainer.epochs=["]),
    Case("list_for_string", ["resume=[1,2]"], ["resume=[1,2]"]),
    Case(
        "unset_environment_variable",
        ["paths.cache_dir=${oc.env:EMOTRAIN_NO_SUCH_VARIABLE}"],
        ["EMOTRAIN_NO_SUCH_VARIABLE", "paths.cache_dir"],
    ),
    # out of range (validate_config and the builders)
    Case("dropout_out_of_range", ["trainer.dropout=1.5"], ["trainer.dropout=1.5", "[0, 1)"]),
    Case("batch_size_zero", ["trainer.batch_size=0"], ["trainer.batch_size=0", ">= 1"]),
    Case("max_nonfinite_zero", ["trainer.max_nonfinite_steps=0"], ["trainer.max_nonfinite_steps=0", ">= 1"]),
    Case("eval_every_zero", ["trainer.eval_every_steps=0"], ["trainer.eval_every_steps=0"]),
    Case("negative_lr", ["optim.lr=-1"], ["optim.lr=-1", "(0, 1]"]),
    Case("layer_decay_zero", ["optim.layer_decay=0"], ["optim.layer_decay=0"]),
    Case("warmup_ratio", ["scheduler.warmup_ratio=1.5"], ["scheduler.warmup_ratio=1.5"]),
    Case("label_smoothing", ["loss.label_smoothing=1.0"], ["loss.label_smoothing=1.0"]),
    Case(
        "class_weights_length",
        [*table(f"{D}/valid_train.csv"), "loss.class_weights=[1.0,2.0]"],
        ["loss.class_weights", "3 labels but 2 weights"],
    ),
    Case("task_weights_unknown_task", ["+loss.task_weights.topic=2.0"], ["loss.task_weights", "topic"]),
    Case("max_examples_zero", ["data.max_train_examples=0"], ["data.max_train_examples=0", ">= 1 or null"]),
    # numeric keys that reached torch / numpy / sklearn unchecked, or gave a useless model
    Case("lr_nan", ["optim.lr=nan"], ["optim.lr=nan", "a finite number in (0, 1]"]),
    Case("lr_inf", ["optim.lr=inf"], ["optim.lr=inf", "a finite number in (0, 1]"]),
    Case("seed_negative", ["seed=-1"], ["seed=-1", "[0, 4294967295]"]),
    Case("seed_beyond_64_bits", ["seed=18446744073709551616"], ["seed=18446744073709551616", "[0, 4294967295]"]),
    Case("split_seed_negative", ["data.split_seed=-1"], ["data.split_seed=-1", "[0, 4294967295]"]),
    Case("cv_seed_negative", ["cv=kfold", "cv.seed=-1"], ["cv.seed=-1", "[0, 4294967295]"]),
    Case("beta_above_one", ["optim.betas=[1.5,0.999]"], ["optim.betas[0]=1.5", "[0, 1)"]),
    Case("one_beta", ["optim.betas=[0.9]"], ["optim.betas", "two numbers"]),
    Case("eps_zero", ["optim.eps=0"], ["optim.eps=0", "(0, 1]"]),
    Case("head_lr_negative", ["optim.head_lr=-1e-3"], ["optim.head_lr=-0.001", "(0, 1] or null"]),
    Case("weight_decay_negative", ["optim.weight_decay=-0.1"], ["optim.weight_decay=-0.1", "[0, 1]"]),
    Case("threshold_above_one", ["trainer.threshold=2"], ["trainer.threshold=2", "(0, 1) or null"]),
    Case("threshold_floor_one", ["trainer.threshold_floor=1"], ["trainer.threshold_floor=1", "[0, 1)"]),
    Case("max_grad_norm_nan", ["trainer.max_grad_norm=nan"], ["trainer.max_grad_norm=nan", "finite"]),
    Case(
        "min_delta_negative", ["trainer.early_stopping.min_delta=-1"], ["trainer.early_stopping.min_delta=-1", ">= 0"]
    ),
    Case("warmup_steps_negative", ["scheduler.warmup_steps=-1"], ["scheduler.warmup_steps=-1", ">= 0"]),
    Case("focal_gamma_negative", ["loss=focal", "loss.gamma=-1"], ["loss.gamma=-1", "[0, 10]"]),
    Case("focal_alpha_nan", ["loss=focal", "loss.alpha=nan"], ["loss.alpha=nan", "finite"]),
    Case(
        "class_weight_nan",
        [*table(f"{D}/valid_train.csv"), "loss.class_weights=[1.0,nan,1.0]"],
        ["loss.class_weights[1]=nan"],
    ),
    Case("class_weights_scalar", ["loss.class_weights=2.0"], ["loss.class_weights=2.0", "'balanced' or a list"]),
    Case("task_weight_negative", ["+loss.task_weights.emotion=-1"], ["loss.task_weights.emotion=-1", ">= 0"]),
    Case(
        "every_task_weight_zero",
        [*table(f"{D}/valid_train.csv"), "+loss.task_weights.emotion=0"],
        ["loss.task_weights", "every task's weight is 0", "nothing trains"],
    ),
    Case(
        "every_class_weight_zero",
        [*table(f"{D}/valid_train.csv"), "loss.class_weights=[0,0,0]"],
        ["loss.class_weights", "every weight is 0"],
    ),
    Case("lr_huge", ["optim.lr=1e30"], ["optim.lr=1e+30", "(0, 1]"]),
    Case("weight_decay_huge", ["optim.weight_decay=1e308"], ["optim.weight_decay=1e+308", "[0, 1]"]),
    Case("eps_huge", ["optim.eps=1e308"], ["optim.eps=1e+308", "(0, 1]"]),
    Case("focal_gamma_huge", ["loss=focal", "loss.gamma=1e308"], ["loss.gamma=1e+308", "[0, 10]"]),
    Case("epochs_beyond_int", ["trainer.epochs=18446744073709551616"], ["trainer.epochs=", "at most 2147483647"]),
    Case("threads_beyond_int", ["trainer.num_threads=18446744073709551616"], ["trainer.num_threads=", "2147483647"]),
    Case(
        "warmup_beyond_the_run",
        ["scheduler.warmup_steps=100000"],
        ["scheduler.warmup_steps=100000", "is not below this run's", "optimiser steps"],
    ),
    Case("empty_output_dir", ["paths.output_dir="], ["paths.output_dir is empty"]),
    Case(
        "max_length_only_special_tokens",
        ["backbone.max_length=2"],
        ["backbone.max_length=2", "adds 2 special tokens", "no text would remain"],
    ),
    Case("empty_separator", [*table(f"{D}/valid_train.csv"), "data.sep=''"], ["data.sep='' is empty"]),
    Case(
        "max_length_beyond_positions",
        ["backbone=minilm", "backbone.max_length=100000"],
        ["backbone.max_length=100000", "position embeddings for 512 tokens", "512 or less"],
    ),
    Case("save_top_k_below_minus_one", ["checkpoint.save_top_k=-2"], ["checkpoint.save_top_k=-2", ">= -1"]),
    Case("prefix_escapes_the_run_dir", ["checkpoint.prefix=../escaped"], ["checkpoint.prefix='../escaped'", "no '/'"]),
    Case(
        "fractions_sum", ["data.val_fraction=0.6", "data.test_fraction=0.5"], ["data.val_fraction + data.test_fraction"]
    ),
    Case("unknown_monitor", ["trainer.monitor=accuracy"], ["trainer.monitor=accuracy", "choose one of"]),
    Case("unknown_primary_task", ["data.primary_task=topic"], ["data.primary_task='topic'", "emotion, sentiment"]),
    Case("unknown_logger", ["logger.kind=wandb"], ["logger.kind=wandb"]),
    Case("unknown_data_kind", ["data.kind=excel"], ["data.kind='excel'", "sample, goemotions, table"]),
    # impossible combinations
    Case("freeze_beyond_depth", ["freeze=partial", "freeze.layers=5"], ["freeze.layers=5", "2 layers", "0..2"]),
    Case("progressive_every_zero", ["freeze=progressive", "freeze.every=0"], ["freeze.every=0"]),
    Case("fold_not_below_k", ["cv=kfold", "cv.k=5", "cv.fold=5"], ["cv.fold=5", "cv.k=5"]),
    Case("kfold_k_one", ["cv=kfold", "cv.k=1"], ["cv.k=1", "k >= 2"]),
    Case(
        "heads_not_dividing_hidden",
        ["backbone=tiny", "backbone.hidden_size=30", "backbone.num_heads=4"],
        ["backbone.hidden_size=30", "backbone.num_heads=4"],
    ),
]

VALID_CASES = [
    # odd-looking but valid: must train (1 epoch, tiny) and see every row
    Case("bom", table(f"{D}/bom.csv"), valid=True),
    Case("crlf", table(f"{D}/crlf.csv"), valid=True),
    Case("quoted_separators", table(f"{D}/quoted_separators.csv"), valid=True),
    Case("duplicate_ids", table(f"{D}/duplicate_ids.csv"), valid=True),
    Case("utf16_with_encoding", table(f"{D}/utf16.csv", "data.encoding=utf-16"), valid=True),
    Case("utf16_without_bom_with_encoding", table(f"{D}/utf16_no_bom.csv", "data.encoding=utf-16-le"), valid=True),
    Case("label_case_variants", table(f"{D}/label_case_variants.csv"), valid=True),
    Case("label_whitespace_variants", table(f"{D}/label_whitespace_variants.csv"), valid=True),
    Case("one_megabyte_text", table("{work}/long_text.csv"), valid=True),
]
ROWS = {
    "bom": 30,
    "crlf": 30,
    "quoted_separators": 30,
    "duplicate_ids": 36,
    "utf16_with_encoding": 30,
    "one_megabyte_text": 31,
    "utf16_without_bom_with_encoding": 30,
    "label_case_variants": 30,
    "label_whitespace_variants": 30,
}


def checkpoint_cases() -> list[Case]:
    """resume=PATH / emotrain-export / emotrain-predict with unusable checkpoints, run dirs and bundles
    ({work}: prepared files)."""
    w = "{work}"
    sample = ["trainer.epochs=1", "data.max_train_examples=48"]  # the reference run's data (data=sample)
    cases = [
        Case("resume_missing", [*sample, f"resume={w}/nothing_here.pt"], ["checkpoint not found", "nothing_here.pt"]),
        Case("resume_empty_file", [*sample, f"resume={D}/empty.pt"], ["empty.pt", "empty file, not a checkpoint"]),
        Case("resume_text_file", [*sample, f"resume={D}/text_file.pt"], ["text_file.pt", "not a readable checkpoint"]),
        Case(
            "resume_other_program_zip",
            [*sample, f"resume={D}/office_document.pt"],
            ["office_document.pt", "not a readable checkpoint"],
        ),
        Case(
            "resume_truncated",
            [*sample, f"resume={w}/truncated.pt"],
            ["truncated.pt", "not a readable checkpoint (truncated"],
        ),
        Case(
            "resume_plain_tensor_file", [*sample, f"resume={w}/tensor.pt"], ["tensor.pt", "not an emotrain checkpoint"]
        ),
        Case(
            "resume_future_version",
            [*sample, f"resume={w}/future.pt"],
            ["future.pt", "format version 99", "upgrade emotrain"],
        ),
        Case(
            "resume_no_optimizer",
            [*sample, f"resume={w}/no_optimizer.pt"],
            ["no_optimizer.pt", "has no optimizer state"],
        ),
        Case(
            "resume_crafted_pickle", [*sample, f"resume={w}/crafted.pt"], ["crafted.pt", "refused by the safe loader"]
        ),
        Case(
            "resume_crafted_legacy_pickle",
            [*sample, f"resume={w}/crafted_legacy.pt"],
            ["crafted_legacy.pt", "refused by the safe loader"],
        ),
        Case(
            "resume_wrong_tasks",
            [*table(f"{D}/valid_train.csv"), "trainer.epochs=1", f"resume={w}/ref/run"],
            ["resume", "different model shape or tasks", "tasks"],
        ),
        Case(
            "resume_other_shape",
            [*sample, "backbone.hidden_size=64", f"resume={w}/ref/run"],
            ["different model shape", "backbone.hidden_size"],
        ),
        Case(
            "resume_corrupt_pointer",
            [*sample, f"resume={w}/corrupt_pointer"],
            ["corrupt_pointer/checkpoints/last.json", "unreadable pointer file"],
        ),
        Case(
            "resume_dangling_pointer",
            [*sample, f"resume={w}/dangling_pointer"],
            ["dangling_pointer/checkpoints/last.json", "which does not exist"],
        ),
        Case(
            "resume_dir_without_checkpoints",
            [*sample, f"resume={D}/bundle_foreign"],
            ["no checkpoints in", "bundle_foreign"],
        ),
        # the other commands that load checkpoints, exports and bundles
        Case(
            "export_truncated_checkpoint",
            [f"checkpoint={w}/truncated.pt", f"out={w}/bundle_out"],
            ["emotrain-export: error:", "truncated.pt"],
            entry="export",
            rc=1,
        ),
        Case(
            "export_crafted_pickle",
            [f"checkpoint={w}/crafted.pt", f"out={w}/bundle_out2"],
            ["emotrain-export: error:", "refused by the safe loader"],
            entry="export",
            rc=1,
        ),
        Case(
            "predict_crafted_pickle",
            ["--model", f"{w}/crafted.pt", "--model-type", "pytorch", "hello"],
            ["emotrain-predict: error:", "refused by the safe loader"],
            entry="predict",
            rc=1,
        ),
        Case(
            "predict_truncated_weights",
            ["--model", f"{w}/truncated_export", "--model-type", "pytorch", "hello"],
            ["emotrain-predict: error:", "model.safetensors"],
            entry="predict",
            rc=1,
        ),
        Case(
            "predict_foreign_export_meta",
            ["--model", f"{w}/foreign_export", "--model-type", "pytorch", "hello"],
            ["emotrain-predict: error:", "emotrain_model.json"],
            entry="predict",
            rc=1,
        ),
        Case(
            "predict_export_wrong_tasks",
            ["--model", f"{w}/wrong_tasks_export", "--model-type", "pytorch", "hello"],
            ["emotrain-predict: error:", "do not match the tasks"],
            entry="predict",
            rc=1,
        ),
        Case(
            "bundle_not_json",
            ["--model", f"{D}/bundle_not_json", "--model-type", "onnx", "hello"],
            ["emotrain-predict: error:", "bundle.json", "not JSON"],
            entry="predict",
            rc=1,
        ),
        Case(
            "bundle_of_another_program",
            ["--model", f"{D}/bundle_foreign", "--model-type", "onnx", "hello"],
            ["emotrain-predict: error:", "bundle.json", "format marker"],
            entry="predict",
            rc=1,
        ),
        Case(
            "bundle_without_tasks",
            ["--model", f"{D}/bundle_no_tasks", "--model-type", "onnx", "hello"],
            ["emotrain-predict: error:", "no tasks"],
            entry="predict",
            rc=1,
        ),
        Case(
            "bundle_future_version",
            ["--model", f"{D}/bundle_future", "--model-type", "onnx", "hello"],
            ["emotrain-predict: error:", "newer than this emotrain supports"],
            entry="predict",
            rc=1,
        ),
        Case(
            "bundle_multilabel_not_bool",
            ["--model", f"{D}/bundle_multilabel_not_bool", "--model-type", "onnx", "hello"],
            ["bundle_multilabel_not_bool/bundle.json", "multilabel 'yes' must be true or false"],
            entry="predict",
            rc=1,
        ),
        Case(
            "bundle_max_length_beyond_positions",
            ["--model", f"{D}/bundle_max_length_beyond", "--model-type", "onnx", "hello"],
            ["max_length 1000000000 exceeds the model's 512 position embeddings"],
            entry="predict",
            rc=1,
        ),
        Case(
            "bundle_thresholds_for_a_single_label_task",
            ["--model", f"{D}/bundle_thresholds_single_label", "--model-type", "onnx", "hello"],
            ["thresholds['emotion']", "single-label (argmax decides)"],
            entry="predict",
            rc=1,
        ),
        Case(
            "predict_model_file_not_directory",
            ["--model", f"{w}/loose_bundle/model.onnx", "hello"],
            ["model.onnx is a file of a bundle; pass its directory"],
            entry="predict",
            rc=1,
        ),
        Case(
            "predict_bad_argument",
            ["--model", f"{D}/bundle_future", "--batch-size", "x", "hello"],
            ["argument --batch-size: invalid int value: 'x'", "(see emotrain-predict --help)"],
            entry="predict",
            rc=2,
        ),
        Case(
            "export_unknown_key",
            [f"checkpoint={w}/truncated.pt", "outt=x"],
            ["unknown key 'outt'", "did you mean 'out'?", "(see emotrain-export --help)"],
            entry="export",
            rc=2,
        ),
    ]
    return cases


FAULT_CASES = [
    # an output directory that cannot be created (root ignores chmod: a regular file stands where a directory must be)
    Case(
        "output_dir_under_a_file",
        ["paths.output_dir={work}/a_file/run"],
        ["{work}/a_file/run: Not a directory", "paths.output_dir"],
    ),
    Case(
        "run_dir_under_a_file",
        ["hydra.run.dir={work}/a_file/run"],
        ["cannot write the run directory: {work}/a_file/run: Not a directory", "hydra.run.dir=DIR"],
        run_dir=False,
    ),
    Case(
        "run_dir_is_a_file",
        ["hydra.run.dir={work}/a_file"],
        ["cannot write the run directory: {work}/a_file", "hydra.run.dir=DIR"],
        run_dir=False,
    ),
]


# --------------------------------------------------------------------------- preparing the derived files


class _Crafted:
    """Unpickling this runs `touch <marker>`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def prepare(work: Path) -> Path:
    """The reference run (data=sample, tiny, 1 epoch) and the broken files derived from it; returns the marker path."""
    import torch

    train([*QUICK, "trainer.epochs=1", "data.max_train_examples=48", "checkpoint.export=true"], work / "ref")
    run_dir = work / "ref" / "run"
    ckpt = next((run_dir / "checkpoints").glob("*.pt"))
    raw = ckpt.read_bytes()
    (work / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    torch.save({"weights": torch.zeros(3)}, work / "tensor.pt")
    torch.save({"format": "emotrain-checkpoint", "format_version": 99}, work / "future.pt")
    full = torch.load(ckpt, weights_only=True)
    torch.save({**full, "optimizer": None}, work / "no_optimizer.pt")
    marker = work / "PWNED"
    torch.save({"format": "emotrain-checkpoint", "format_version": 1, "model": _Crafted(marker)}, work / "crafted.pt")
    with open(work / "crafted_legacy.pt", "wb") as fh:
        pickle.dump({"format": "emotrain-checkpoint", "model": _Crafted(marker)}, fh)
    for name, pointer in (("corrupt_pointer", "{not json"), ("dangling_pointer", json.dumps({"path": "gone.pt"}))):
        (work / name / "checkpoints").mkdir(parents=True)
        shutil.copy(ckpt, work / name / "checkpoints" / ckpt.name)
        (work / name / "checkpoints" / "last.json").write_text(pointer)
    for name in ("truncated_export", "foreign_export", "wrong_tasks_export"):
        shutil.copytree(run_dir / "model", work / name)
    weights = work / "truncated_export" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (work / "foreign_export" / "emotrain_model.json").write_text(
        json.dumps({"name": "some-other-model", "architectures": ["GPT2"]})
    )
    meta = json.loads((work / "wrong_tasks_export" / "emotrain_model.json").read_text())
    meta["tasks"] = [{"name": "topic", "labels": ["news", "sport"], "multilabel": False}]
    (work / "wrong_tasks_export" / "emotrain_model.json").write_text(json.dumps(meta))
    (work / "a_file").write_text("a regular file where a directory should be\n")
    (work / "loose_bundle").mkdir()
    (work / "loose_bundle" / "model.onnx").write_bytes(b"not really a graph")
    (work / "loop_a.csv").symlink_to(work / "loop_b.csv")  # two links pointing at each other
    (work / "loop_b.csv").symlink_to(work / "loop_a.csv")
    # a 1 MB text in an otherwise valid table
    body = (CORPUS / "valid_train.csv").read_text(encoding="utf-8")
    words = "so much joy in this very long text " * (1_048_576 // 35 + 1)
    (work / "long_text.csv").write_text(body + f"{words[:1_048_576].strip()},joy\n", encoding="utf-8")
    return marker


# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("bad_inputs")
    marker = prepare(work)
    cases = DATA_CASES + CONFIG_CASES + VALID_CASES + FAULT_CASES + checkpoint_cases()
    started = time.perf_counter()
    outcomes = run_batch(cases, work)
    return work, marker, outcomes, time.perf_counter() - started


def _error_line(case: Case, outcome: Outcome, work: Path) -> str:
    err = outcome.err
    assert "Traceback" not in err, f"{case.name}: traceback on stderr:\n{err[-3000:]}"
    assert outcome.rc == case.rc, f"{case.name}: exit status {outcome.rc}, expected {case.rc}\nstderr: {err[-2000:]}"
    lines = [line for line in err.splitlines() if line.strip()]
    prefix = {
        "emotrain": "emotrain: error: ",
        "predict": "emotrain-predict: error: ",
        "export": "emotrain-export: error: ",
    }[case.entry]
    assert len(lines) == 1 and lines[0].startswith(prefix), (
        f"{case.name}: stderr is not one '{prefix}...' line:\n{err[-3000:]}"
    )
    line = lines[0]
    for fragment in case.expect:
        fragment = fragment.replace("{work}", str(work))
        assert fragment in line, f"{case.name}: {fragment!r} not in the message: {line}"
    return line


ERROR_CASES = DATA_CASES + CONFIG_CASES + FAULT_CASES


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda c: c.name)
def test_bad_data_and_config_give_one_line(corpus_run, case):
    work, _, outcomes, _ = corpus_run
    outcome = outcomes[case.name]
    line = _error_line(case, outcome, work)
    status = outcome.run_dir / "status.json"
    if status.exists():  # errors after Hydra made the run directory: it records why, and nothing was trained
        data = json.loads(status.read_text())
        assert data["status"] == "failed" and data["error"] == line.removeprefix("emotrain: error: ")
        assert not (outcome.run_dir / "metrics.json").exists() and not (outcome.run_dir / "checkpoints").exists()


@pytest.mark.parametrize("case", checkpoint_cases(), ids=lambda c: c.name)
def test_bad_checkpoints_and_bundles_give_one_line(corpus_run, case):
    work, marker, outcomes, _ = corpus_run
    _error_line(case, outcomes[case.name], work)  # every case ran: a broken import fails here, never skips
    assert not marker.exists(), "a crafted pickle ran its command"


@pytest.mark.parametrize("case", VALID_CASES, ids=lambda c: c.name)
def test_odd_but_valid_inputs_train(corpus_run, case):
    work, _, outcomes, _ = corpus_run
    outcome = outcomes[case.name]
    assert outcome.rc == 0, f"{case.name}: exit status {outcome.rc}\n{outcome.err[-3000:]}\n{outcome.out[-2000:]}"
    assert "Traceback" not in outcome.err
    metrics = json.loads((outcome.run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert sum(metrics["data_sizes"].values()) == ROWS[case.name]  # every row read, none split or merged
    assert [t["labels"] for t in metrics["tasks"]] == [
        ["anger", "fear", "joy"]
    ]  # the header was found (BOM) and no cell bled into labels
    if case.name == "label_case_variants":  # normalised to the most frequent spelling, said once
        console = outcome.out + outcome.err  # Hydra's console log handler writes to stdout
        warnings = [line for line in console.splitlines() if "differ only in case" in line]
        assert len(warnings) == 1 and "'JOY' -> 'joy'" in warnings[0], console[-2000:]
    if case.name == "label_whitespace_variants":  # 'joy\t' and 'anger\xa0' read as 'joy' / 'anger', said once
        console = outcome.out + outcome.err
        warnings = [line for line in console.splitlines() if "held tabs, other whitespace" in line]
        assert len(warnings) == 1 and "label_whitespace_variants.csv line 2" in warnings[0], console[-2000:]


def test_corpus_is_big_enough_and_fast(corpus_run):
    _, _, outcomes, seconds = corpus_run
    files = {
        a.split("=", 1)[1]
        for c in DATA_CASES
        for a in c.argv
        if a.startswith(("data.train_file=", "data.val_file=")) and D in a
    }
    assert len(files) >= 25, sorted(files)  # malformed data files, each its own case
    assert len(ERROR_CASES) + len(checkpoint_cases()) >= 25 + 20
    slow = {name: o.seconds for name, o in outcomes.items() if o.seconds > 30}
    assert not slow, slow


def test_every_corpus_file_is_used():
    used = " ".join(a for c in DATA_CASES + VALID_CASES + checkpoint_cases() + CONFIG_CASES for a in c.argv)
    unused = [p.name for p in CORPUS.iterdir() if p.name not in used and p.name != "README.md"]
    assert not unused, f"corpus files no case uses: {unused}"


def test_batch_runner_matches_real_processes(corpus_run):
    """The batch runner shows what a user sees: the same exit status and stderr as `python -m emotrain` / the
    console scripts."""
    work, _, outcomes, _ = corpus_run
    # compose, data and (after the model is built) resume errors; a bundle error of emotrain-predict
    picks = ["wrong_type", "unquoted_separator", "resume_truncated", "bundle_not_json"]
    by_name = {c.name: c for c in ERROR_CASES + checkpoint_cases()}
    for name in picks:
        case = by_name[name]
        argv = case.argv_for(work)
        if case.entry == "emotrain":
            cmd = [sys.executable, "-m", "emotrain", *argv]
        else:
            cmd = [sys.executable, "-m", "emotrain.inference", *argv]
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, env=subprocess_env(work / "cache"), capture_output=True, text=True, timeout=180
        )
        assert proc.returncode == outcomes[name].rc, (name, proc.stderr[-2000:])
        assert proc.stderr == outcomes[name].err, (name, proc.stderr, outcomes[name].err)


def test_hydra_full_error_shows_the_traceback(tmp_path):
    """HYDRA_FULL_ERROR=1 is the way to a traceback; without it there is none (the other tests)."""
    env = subprocess_env(tmp_path / "cache", HYDRA_FULL_ERROR="1")
    argv = [*QUICK, *table(f"{D}/unquoted_separator.csv"), f"hydra.run.dir={tmp_path / 'run'}"]
    full = subprocess.run(
        [sys.executable, "-m", "emotrain", *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert full.returncode != 0 and "Traceback" in full.stderr and "DataError" in full.stderr
    assert "emotrain: error: " in full.stderr and "unquoted_separator.csv line 3" in full.stderr
    compose = subprocess.run(
        [sys.executable, "-m", "emotrain", "trainer.epochs=abc"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert compose.returncode != 0 and "Traceback" in compose.stderr and "trainer.epochs" in compose.stderr


# --------------------------------------------------------------------------- safe loading


def test_no_load_path_can_unpickle(tmp_path):
    """Every loader in the package refuses pickled objects: torch.load only with weights_only=True,
    np.load only with allow_pickle=False, no pickle/joblib/yaml object loading at all."""
    offenders = []
    for path in (REPO_ROOT / "emotrain").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path}: torch.load({m.group(1)})")
        for m in re.finditer(r"np\.load\(([^)]*)\)", text):
            if "allow_pickle=False" not in m.group(1):
                offenders.append(f"{path}: np.load({m.group(1)})")
        for pattern in (
            r"pickle\.loads?\(",
            r"joblib\.load\(",
            r"yaml\.load\(",
            r"yaml\.unsafe_load\(",
            r"dill\.",
            r"cloudpickle\.",
            r"(?<![.\w])eval\(",
            r"(?<![.\w])exec\(",
        ):
            if re.search(pattern, text):
                offenders.append(f"{path}: {pattern}")
    assert not offenders, offenders


def test_crafted_feature_cache_chunk_is_not_unpickled(tmp_path):
    import numpy as np

    from emotrain.training.caches import FeatureCache

    marker = tmp_path / "PWNED"
    chunk_dir = tmp_path / "features" / ("k" * 32)
    chunk_dir.mkdir(parents=True)
    evil = np.empty(1, dtype=object)
    evil[0] = _Crafted(marker)
    np.savez(chunk_dir / "evil.npz", keys=evil, features=evil)
    feats, computed = FeatureCache(tmp_path, "k" * 64).lookup(
        ["a", "b"], lambda idx: np.ones((len(idx), 4), dtype=np.float32)
    )
    assert computed == 2 and feats.shape == (2, 4)
    assert not marker.exists()
