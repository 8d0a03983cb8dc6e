"""The benchmark record as the small table `python -m qin_lightning.bench` prints."""

from __future__ import annotations

from typing import Any


def table(record: dict[str, Any]) -> str:
    """The record as a small text table (plain vs fast, further precisions, ONNX, parity, memory)."""
    def fmt(value: Any, unit: str = "") -> str:
        return "-" if value is None else f"{value:,.1f}{unit}" if value >= 10 else f"{value:.3g}{unit}"

    def ratio(a: Any, b: Any) -> str:
        return f"{a / b:.2f}x" if a and b else "-"

    r = record.get
    lines = [
        f"{'metric':34s} {'plain':>14s} {'fast':>14s} {'fast/plain':>10s}",
        f"{'train samples/s':34s} {fmt(r('plain_train_samples_per_s')):>14s} {fmt(r('train_samples_per_s')):>14s} "
        f"{ratio(r('train_samples_per_s'), r('plain_train_samples_per_s')):>10s}",
        f"{'inference samples/s (batch ' + str(r('config')['batch_size']) + ')':34s} "
        f"{fmt(r('plain_infer_samples_per_s')):>14s} {fmt(r('infer_samples_per_s')):>14s} "
        f"{ratio(r('infer_samples_per_s'), r('plain_infer_samples_per_s')):>10s}",
        f"{'latency p50 / p99 ms (batch 1)':34s} "
        f"{fmt(r('plain_latency_p50_ms')) + ' / ' + fmt(r('plain_latency_p99_ms')):>14s} "
        f"{fmt(r('latency_p50_ms')) + ' / ' + fmt(r('latency_p99_ms')):>14s}",
        f"{'AUC (validation)':34s} {fmt(r('auc_plain')):>14s} {fmt(r('auc_fast')):>14s}",
    ]
    for p in record.get("precisions", [])[1:]:
        lines.append(f"{p + ' fast: train / infer samples/s':34s} {fmt(r(p + '_train_samples_per_s')):>14s} "
                     f"{fmt(r(p + '_infer_samples_per_s')):>14s} "
                     f"{'x' + format(r(p + '_train_speedup'), '.2f') + ' / x' + format(r(p + '_infer_speedup'), '.2f'):>14s}"
                     f" vs {record['precisions'][0]} fast; AUC {r(p + '_auc'):.6f}, max |dp| "
                     f"{fmt(r(p + '_max_abs_prob_diff'))}")
    if r("latency_1thread_p50_ms") is not None:
        lines.append(f"{'latency p50 / p99 ms, 1 thread':34s} "
                     f"{fmt(r('plain_latency_1thread_p50_ms')) + ' / ' + fmt(r('plain_latency_1thread_p99_ms')):>14s} "
                     f"{fmt(r('latency_1thread_p50_ms')) + ' / ' + fmt(r('latency_1thread_p99_ms')):>14s}")
    for key, name in (("onnx", "ONNX fp32"), ("onnx_int8", "ONNX int8")):
        for suffix, label in (("", ""), ("_1thread", ", 1 thread")):
            p50, p99 = r(f"{key}{suffix}_latency_p50_ms"), r(f"{key}{suffix}_latency_p99_ms")
            if p50 is not None:
                cell = fmt(p50) + " / " + fmt(p99)
                lines.append(f"{name + ' latency p50 / p99 ms' + label:34s} {'':>14s} {cell:>14s}")
    if r("onnx_int8_auc") is not None:
        lines.append(f"ONNX int8 vs eager: AUC {r('onnx_int8_auc'):.6f} vs {r('auc_fast'):.6f}, mean |dp| "
                     f"{fmt(r('onnx_int8_mean_abs_prob_diff'))}, max |dp| {fmt(r('onnx_int8_max_abs_prob_diff'))}")
    if r("epoch_seconds") is not None:
        lines.append(f"{'whole epoch s (fast)':34s} {'':>14s} {fmt(r('epoch_seconds')):>14s}")
    lines.append(f"max |p_fast - p_plain| = {fmt(r('max_abs_prob_diff'))}; peak RSS {fmt(r('peak_rss_mb'))} MB; "
                 f"device {r('device')}, {r('threads')} threads")
    return "\n".join(lines)
