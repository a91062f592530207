"""Our verification and retrieval metrics against torchmetrics': time and value, in the same run.

Why torchmetrics is a test dependency and not a runtime one (issue 13 section 7): it gives the same
values (tests/test_metrics_against_torchmetrics.py) but takes longer. Rows:

- ROC (every distinct distance) of N pairs: ``modules.metrics.verification.roc_curve`` against
  ``torchmetrics.functional.classification.binary_roc`` (scores = -distance);
- AUC: ``auc(roc_curve(...))`` against ``binary_auroc``;
- retrieval of Q leave-one-out queries (rank-1, rank-5, mAP): ``modules.metrics.retrieval.
  retrieval_metrics`` against ``RetrievalHitRate`` (top 1 and 5) and ``RetrievalMAP`` on the full
  cosine table (cosines shifted by +2: torchmetrics counts a relevant item scored <= 0 as not
  retrieved).

Distances: half same pairs ~ N(1.0, 0.3), half different ~ N(1.8, 0.3), rounded to 1e-4 (ties, as
float distances have); embeddings: Q samples of Q/10 identities, 64-d, noise 1.2 around random
centres. Best of ``--repeats`` timings after a warm-up call, 2 torch threads. Ratio = torchmetrics time / ours.

    python benchmarks/bench_metrics_vs_torchmetrics.py                      # 6k and 1M pairs, 2k queries
    python benchmarks/bench_metrics_vs_torchmetrics.py --pairs 6000 --queries 300 --repeats 1
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import load_line  # noqa: E402
from modules.metrics.retrieval import retrieval_metrics  # noqa: E402
from modules.metrics.verification import auc, roc_curve, tar_at_far  # noqa: E402


def best_time(function, repeats: int):
    """The shortest of ``repeats`` timings after one untimed call (imports, first-call set-up)."""
    times, result = [], function()
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def verification_rows(n: int, repeats: int) -> list[str]:
    from torchmetrics.functional.classification import binary_auroc, binary_roc  # noqa: PLC0415

    rng = np.random.default_rng(0)
    same = rng.random(n) < 0.5
    distances = np.round(np.where(same, rng.normal(1.0, 0.3, n), rng.normal(1.8, 0.3, n)).clip(0, 4), 4)
    scores, target = torch.from_numpy(-distances), torch.from_numpy(same.astype(np.int64))
    t_roc, (fpr, tpr, _) = best_time(lambda: roc_curve(distances, same), repeats)
    t_ref_roc, (ref_fpr, ref_tpr, _) = best_time(lambda: binary_roc(scores, target), repeats)
    t_auc, ours_auc = best_time(lambda: auc(*roc_curve(distances, same)[:2]), repeats)
    t_ref_auc, ref_auc = best_time(lambda: float(binary_auroc(scores, target)), repeats)
    tar = tar_at_far(distances, same, 1e-3).tar
    ref_tar = float(ref_tpr[ref_fpr <= 1e-3].max())
    return [f"{'ROC':<10}{n:>10,d} pairs {t_roc * 1e3:>10.1f} ms {t_ref_roc * 1e3:>12.1f} ms {t_ref_roc / t_roc:>6.1f}x"
            f"   points {len(fpr)} / {len(ref_fpr)}, TAR@1e-3 {tar:.6f} / {ref_tar:.6f}",
            f"{'AUC':<10}{n:>10,d} pairs {t_auc * 1e3:>10.1f} ms {t_ref_auc * 1e3:>12.1f} ms {t_ref_auc / t_auc:>6.1f}x"
            f"   AUC {ours_auc:.8f} / {ref_auc:.8f}"]


def retrieval_row(queries: int, repeats: int) -> str:
    from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP  # noqa: PLC0415

    rng = np.random.default_rng(0)
    labels = rng.integers(0, max(queries // 10, 1), queries)
    emb = rng.normal(size=(labels.max() + 1, 64))[labels] + rng.normal(scale=1.2, size=(queries, 64))
    t_ours, ours = best_time(lambda: retrieval_metrics(emb, labels, emb, labels, exclude_self=True), repeats)

    def reference():
        x = torch.nn.functional.normalize(torch.from_numpy(emb).float(), dim=1)
        similarity = x @ x.T + 2.0
        relevant = torch.from_numpy(labels)[:, None] == torch.from_numpy(labels)[None, :]
        keep = ~torch.eye(queries, dtype=torch.bool)
        index = torch.arange(queries)[:, None].expand(queries, queries)
        preds, target, indexes = similarity[keep], relevant[keep], index[keep]
        skip = {"empty_target_action": "skip"}
        return (float(RetrievalHitRate(top_k=1, **skip)(preds, target, indexes=indexes)),
                float(RetrievalMAP(**skip)(preds, target, indexes=indexes)))

    t_ref, (rank1, mean_ap) = best_time(reference, repeats)
    return (f"{'retrieval':<10}{queries:>10,d} queries {t_ours:>8.2f} s  {t_ref:>12.2f} s  {t_ref / t_ours:>6.1f}x"
            f"   rank1 {ours['rank1']:.6f} / {rank1:.6f}, mAP {ours['mAP']:.6f} / {mean_ap:.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[6000, 1_000_000])
    parser.add_argument("--queries", type=int, nargs="+", default=[2000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(load_line())
    print(f"{'metric':<10}{'size':>16} {'ours':>13} {'torchmetrics':>15} {'ratio':>7}   values ours / torchmetrics")
    for n in args.pairs:
        print("\n".join(verification_rows(n, args.repeats)), flush=True)
    for q in args.queries:
        print(retrieval_row(q, args.repeats), flush=True)


if __name__ == "__main__":
    main()
