"""Export a Hugging Face causal LM folder to tweetgen's model folder (ARCHITECTURE.md, format 1), checked and atomic.

Everything is written into a temporary folder next to the destination (same filesystem), checked there with
tweetgen's runtime, and only then swapped in: an export that fails, runs out of disk or is killed leaves the
previous folder as it was.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import replace as _replace
from pathlib import Path
from typing import Any

from tweetgen.copies import FILE as COPY_INDEX_FILE
from tweetgen.copies import CopyIndex
from tweetgen.errors import TweetgenError
from tweetgen.trainer.export import swap
from tweetgen.trainer.export.card import UNKNOWN_LICENSE, render_card
from tweetgen.trainer.export.fuse import can_fuse, fused_graph, weights_of_folder
from tweetgen.trainer.export.quantize import (INT4_KINDS, INT8_METHODS, PROTOBUF_LIMIT, convert_fp16, quantize_int4,
                                              quantize_int8, save_onnx)
from tweetgen.trainer.export.info import (ExportError, ExportInfo, check_causal_lm, export_folder_info,
                                          write_folder_info, write_tokenizer_files)
from tweetgen.trainer.export.report import ExportReport

__all__ = ["ExportError", "ExportInfo", "ExportReport", "check_causal_lm", "export_folder_info", "export_model"]

log = logging.getLogger(__name__)
LOSS_CURVE = "loss.png"
KEEP_FILES = ("model.onnx", COPY_INDEX_FILE, "tokenizer.json", "config.json", "generation_config.json",
              "tweetgen.json", "README.md", LOSS_CURVE, UNKNOWN_LICENSE,
              # not read by tweetgen, but AutoTokenizer needs them to rebuild the right tokenizer for Optimum users
              "tokenizer_config.json", "special_tokens_map.json")
VARIANT_FILES = ("model.onnx", "model_quantized.onnx", "model_fp16.onnx", "model_q4.onnx")
REPLACEABLE_MARKERS = ("tweetgen.json", "model.onnx")  # an existing out_dir holding one of these may be replaced
INT8_TOLERANCE = 0.03  # int8 perplexity may exceed fp32's by this fraction before the report warns
INT4_TOLERANCE = 0.05  # the same for int4
INT4_FAST_TOLERANCE = 0.01  # the fast 4-bit kind is kept within this of fp32's perplexity, else the accurate one
FP16_TOLERANCE = 1.0  # max |logit| difference fp16 vs fp32 (on CPU) before the report warns


def export_model(model_dir: str | Path, out_dir: str | Path, *, info: ExportInfo, eval_texts: list[str] | None = None,
                 int8: bool = True, fp16: bool = True, fp32: bool = True, fuse: bool = True,
                 copy_texts: list[str] | None = None, int8_method: str | None = None, max_new_tokens: int = 16,
                 loss_curve: str | Path | None = None, progress: Callable[[str], None] | None = None,
                 int4: bool = False) -> ExportReport:
    """Export a Hugging Face causal LM folder to a tweetgen model folder, check it, and move it into place.

    Args:
        model_dir: the PyTorch folder (config.json, weights, tokenizer), e.g. a training output or checkpoint.
        out_dir: the model folder to write, e.g. exported/<name>; an existing one is replaced only on success.
        info: names, users, prompt start, training details and sampling defaults to record.
        eval_texts: held-out texts (tweets) on which fp32 and int8 perplexities are compared; None skips it.
        int8, fp16: write model_quantized.onnx (CPU) and model_fp16.onnx (CUDA).
        int4: write model_q4.onnx too (4-bit linear layers, quantize.quantize_int4), its perplexity against fp32's
            measured on eval_texts.
        fp32: keep model.onnx in the folder (False: it is made and used for every check, then left out, e.g. to keep
            a model folder small; needs int8 or fp16).
        int8_method: None picks the int8 kind: "per_tensor" when eval_texts show it within INT8_TOLERANCE of fp32,
            else "blockwise"; or force one of tweetgen.trainer.export.quantize.INT8_METHODS (no perplexity check without eval_texts).
        copy_texts: the training tweets: their 8-word windows are indexed into copies.bin, with which the runtime
            draws again any text that copies one (tweetgen.copies). None: no index.
        fuse: build a GPT-2 or Llama graph straight from the weights with onnxruntime's fused operators
            (tweetgen.trainer.export.fuse: Optimum's interface, which Optimum loads too); other architectures get
            Optimum's export. False takes Optimum's export for all.
        max_new_tokens: tokens decoded greedily per prompt in the parity check.
        loss_curve: a picture of the training loss (loss.png) to put in the folder and show in the card.
        progress: called with a short description as each step starts.

    Returns:
        The ExportReport (also written into tweetgen.json and the model card).

    Raises:
        ExportError: not a causal LM folder, Optimum failed, ONNX and PyTorch disagree, or the disk is full.
    """
    started = time.perf_counter()
    model_dir, out_dir = Path(model_dir).expanduser(), Path(out_dir).expanduser()
    if not model_dir.is_dir():
        raise ExportError(f"model folder {str(model_dir)!r} does not exist or is not a folder")
    if not (fp32 or int8 or fp16 or int4):
        raise ExportError("the folder would hold no model: keep fp32, or make int8, int4 or fp16")
    if int8_method is not None and int8_method not in INT8_METHODS:
        raise ValueError(f"int8_method must be None or one of {', '.join(INT8_METHODS)}, not {int8_method!r}")
    config = check_causal_lm(model_dir)
    _check_destination(out_dir, source=model_dir)
    swap.remove_stale_temps(out_dir)
    tmp = None
    try:
        tmp = swap.make_temp(out_dir)
        progress = progress or _log_step
        report = _build(model_dir, config, tmp, info, eval_texts, int8 and (int8_method or "auto"), fp16, fuse,
                        max_new_tokens, progress)
        if int4:
            progress("quantizing to 4 bits")
            report = _add_int4(tmp, report, eval_texts)
        if copy_texts is not None:
            progress("indexing the training tweets' 8-word windows")
            index = CopyIndex.of_texts(copy_texts)
            index.save(tmp / COPY_INDEX_FILE)
            report = _replace(report, copy_index_windows=len(index))
        if not fp32:
            for path in tmp.glob("model.onnx*"):  # the graph and any external data beside it
                path.unlink()
        if loss_curve is not None and Path(loss_curve).is_file():
            shutil.copy2(loss_curve, tmp / LOSS_CURVE)
        report = _finish(tmp, info, report, out_dir, time.perf_counter() - started)
        swap.swap_into_place(tmp, out_dir)
    except OSError as exc:
        raise _os_error(exc, out_dir, tmp) from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)  # the failed export, or the old folder swapped out
    log.info("exported %s in %.0f s", out_dir, report.seconds)
    return report


def _check_destination(out_dir: Path, *, source: Path) -> None:
    """Refuse a destination whose replacement would destroy something that is not a model folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder; choose another output folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not any((out_dir / m).is_file() for m in REPLACEABLE_MARKERS):
        raise ExportError(f"{out_dir} exists and is not a model folder (no {' or '.join(REPLACEABLE_MARKERS)}); "
                          "the export would replace it: choose another output folder or remove it")
    out, src = out_dir.resolve(), source.resolve()
    if out == src or out in src.parents:
        raise ExportError(f"the output folder {out_dir} holds the model being exported ({source}); "
                          "choose another output folder")


def _build(model_dir: Path, config, tmp: Path, info: ExportInfo, eval_texts: list[str] | None, int8: str | bool,
           fp16: bool, fuse: bool, max_new_tokens: int, progress: Callable[[str], None]) -> ExportReport:
    """model.onnx (the fused graph straight from the weights where fusing applies, else Optimum's), checked against
    PyTorch once; then the variants made from it. int8: False, "auto" or an int8 method."""
    from tweetgen.trainer.export.parity import max_logit_diff

    if fuse and can_fuse(config.to_dict()):
        progress(f"building the fused {config.model_type} graph from the weights")
        _fused_export(model_dir, config, tmp)
        graph = "fused"
    else:
        progress("exporting to ONNX with Optimum")
        _optimum_export(model_dir, tmp)
        graph = "optimum"
    write_tokenizer_files(model_dir, config, tmp)
    write_folder_info(model_dir, config, tmp, info)
    progress("checking the ONNX graph against PyTorch")
    parity = _check_parity(model_dir, tmp, max_new_tokens, f"the {graph} {config.model_type} graph")
    report = ExportReport(out_dir=tmp, files={}, parity_prompts=parity.prompts, max_logit_diff=parity.max_logit_diff,
                          graph=graph)
    if int8:
        progress("quantizing to int8")
        report = _add_int8(tmp, report, eval_texts, int8)
    if fp16:
        progress("converting to fp16")
        convert_fp16(tmp / "model.onnx", tmp / "model_fp16.onnx")
        report = _check_fp16_on_cpu(tmp, report, max_logit_diff)
    return report


def _check_parity(model_dir: Path, tmp: Path, max_new_tokens: int, what: str):
    from tweetgen.trainer.export.parity import check_parity

    parity = check_parity(model_dir, tmp, max_new_tokens=max_new_tokens)
    if not parity.equal:
        bad = parity.mismatches[0]
        raise ExportError(f"{what} of {model_dir} decodes differently from PyTorch: prompt {bad.prompt_ids} "
                          f"gave {bad.onnx_ids} with ONNX and {bad.torch_ids} with PyTorch "
                          f"(max logit difference {parity.max_logit_diff:.3g}); the previous model folder is unchanged")
    return parity


def _fused_export(model_dir: Path, config, tmp: Path) -> None:
    """model.onnx: the fused graph (tweetgen.trainer.export.fuse) built from the PyTorch weights, and config.json."""
    weights = weights_of_folder(model_dir)
    large = sum(w.nbytes for w in weights.values()) > PROTOBUF_LIMIT
    save_onnx(fused_graph(weights, config.to_dict(), str(model_dir)), tmp / "model.onnx", large)
    config.save_pretrained(tmp)


def _optimum_export(model_dir: Path, tmp: Path) -> None:
    from optimum.exporters.onnx import main_export

    try:
        main_export(str(model_dir), tmp, task="text-generation-with-past", do_validation=False, device="cpu",
                    local_files_only=True, library_name="transformers")
    except OSError:
        raise
    except Exception as exc:  # Optimum and torch.onnx raise many types; the message is what the user needs
        if _disk_full(exc):
            raise OSError(errno.ENOSPC, str(exc)) from exc
        raise ExportError(f"Optimum could not export {model_dir} (task text-generation-with-past): {exc}") from exc
    if not (tmp / "model.onnx").is_file():
        raise ExportError(f"the export of {model_dir} made no model.onnx; it made: "
                          f"{', '.join(sorted(p.name for p in tmp.iterdir()))}")


def _add_int8(tmp: Path, report: ExportReport, eval_texts: list[str] | None, method: str) -> ExportReport:
    """The int8 variant: `method`, or ("auto") the faster per-tensor kind when held-out texts show it within
    tolerance, else blockwise."""
    from tweetgen.trainer.eval.perplexity import perplexity

    int8_path = tmp / "model_quantized.onnx"
    if not eval_texts:  # nothing to check the faster kind against: take the one that is accurate everywhere
        method = "blockwise" if method == "auto" else method
        return _replace(report, int8_method=method,
                        int8_linear_layers=quantize_int8(tmp / "model.onnx", int8_path, method=method))
    fp32 = perplexity(tmp / "model.onnx", eval_texts)
    for method in ("per_tensor", "blockwise") if method == "auto" else (method,):
        count = quantize_int8(tmp / "model.onnx", int8_path, method=method)
        quantized = perplexity(int8_path, eval_texts)
        report = _replace(report, int8_linear_layers=count, int8_method=method, perplexity_fp32=fp32.perplexity,
                          perplexity_int8=quantized.perplexity, eval_tokens=fp32.tokens)
        if report.int8_relative_diff <= INT8_TOLERANCE:
            return report
        log.info("int8 %s: perplexity %.3f is %.1f%% above fp32's %.3f; trying the next kind", method,
                 quantized.perplexity, 100 * report.int8_relative_diff, fp32.perplexity)
    message = (f"int8 perplexity {quantized.perplexity:.3f} is {report.int8_relative_diff:.1%} above fp32's "
               f"{fp32.perplexity:.3f} (tolerance {INT8_TOLERANCE:.0%}); run with precision='fp32' if it matters")
    log.warning(message)
    return _replace(report, warnings=(*report.warnings, message))


def _add_int4(tmp: Path, report: ExportReport, eval_texts: list[str] | None) -> ExportReport:
    """The 4-bit variant: the fast kind when held-out texts show it within INT4_FAST_TOLERANCE of fp32, else the
    accurate kind (also without texts: nothing to check the fast one against); its perplexity against fp32's."""
    from tweetgen.trainer.eval.perplexity import perplexity

    path = tmp / "model_q4.onnx"
    if not eval_texts:
        return _replace(report, int4_kind="accurate",
                        int4_linear_layers=quantize_int4(tmp / "model.onnx", path, **INT4_KINDS["accurate"]))
    fp32 = report.perplexity_fp32 or perplexity(tmp / "model.onnx", eval_texts).perplexity
    for kind in INT4_KINDS:
        count = quantize_int4(tmp / "model.onnx", path, **INT4_KINDS[kind])
        quantized = perplexity(path, eval_texts)
        report = _replace(report, int4_linear_layers=count, int4_kind=kind, perplexity_fp32=fp32,
                          perplexity_int4=quantized.perplexity, eval_tokens=quantized.tokens)
        if kind != "fast" or report.int4_relative_diff <= INT4_FAST_TOLERANCE:
            break
        log.info("int4 fast: perplexity %.3f is %.1f%% above fp32's %.3f; trying the accurate kind",
                 quantized.perplexity, 100 * report.int4_relative_diff, fp32)
    if report.int4_relative_diff > INT4_TOLERANCE:
        message = (f"int4 perplexity {quantized.perplexity:.3f} is {report.int4_relative_diff:.1%} above fp32's "
                   f"{fp32:.3f} (tolerance {INT4_TOLERANCE:.0%}); prefer int8")
        log.warning(message)
        report = _replace(report, warnings=(*report.warnings, message))
    return report


def _check_fp16_on_cpu(tmp: Path, report: ExportReport, max_logit_diff: Callable[..., float]) -> ExportReport:
    """fp16 vs fp32 logits, when this onnxruntime has CPU kernels for the fp16 graph (logged when not)."""
    try:
        diff = max_logit_diff(tmp, "fp16")
    except (TweetgenError, RuntimeError) as exc:  # onnxruntime's errors derive from RuntimeError
        log.info("fp16 variant not checked on CPU: %s", exc)
        return report
    report = _replace(report, fp16_max_logit_diff=diff)
    if not diff < FP16_TOLERANCE:  # NaN included: a constant overflowed float16
        message = f"fp16 logits differ from fp32 by up to {diff:.3g} (tolerance {FP16_TOLERANCE}); prefer fp32 on GPU"
        log.warning(message)
        report = _replace(report, warnings=(*report.warnings, message))
    return report


def _finish(tmp: Path, info: ExportInfo, report: ExportReport, out_dir: Path, seconds: float) -> ExportReport:
    """Prune to the format's files, record the report in tweetgen.json, write the card."""
    variants = [name for name in VARIANT_FILES if (tmp / name).is_file()]
    keep = set(KEEP_FILES) | set(variants)
    for path in tmp.iterdir():
        data_of = path.name.removesuffix("_data").removesuffix(".data")  # external weights stay with their graph
        if path.name not in keep and data_of not in variants:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    files = {path.name: path.stat().st_size for path in sorted(tmp.iterdir()) if path.name.startswith("model")}
    report = _replace(report, out_dir=out_dir, files=files, seconds=seconds)
    info_path = tmp / "tweetgen.json"
    tweetgen = _read_json(info_path)
    tweetgen["export"] = report.to_json()
    info_path.write_text(json.dumps(tweetgen, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    card = render_card(name=info.name, users=info.users, base_model=info.base_model, training=info.training,
                       evaluation=info.evaluation, export=report.to_json(), prompt_start=info.prompt_start,
                       license=info.license, path=str(out_dir), loss_curve=(tmp / LOSS_CURVE).is_file(),
                       sampling=info.sampling)
    (tmp / "README.md").write_text(card, encoding="utf-8")
    if info.license == "other":
        (tmp / UNKNOWN_LICENSE).write_text(
            "The license of the base model these weights come from was not found when the model was exported.\n"
            "That license applies to this model: find it before you publish or use the model.\n", encoding="utf-8")
    return report


def _os_error(exc: OSError, out_dir: Path, tmp: Path | None) -> ExportError:
    where = tmp or out_dir.parent
    if exc.errno == errno.ENOSPC:
        return ExportError(f"disk full while exporting {out_dir} (writing in {where}); free some space and export "
                           f"again; {out_dir} was left as it was")
    return ExportError(f"cannot write the export of {out_dir} (in {where}): {exc}; {out_dir} was left as it was")


def _disk_full(exc: BaseException | None) -> bool:
    """True when the exception or one it was raised from is a full disk (torch.onnx wraps OSError)."""
    while exc is not None:
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _log_step(step: str) -> None:
    log.info("%s", step)
