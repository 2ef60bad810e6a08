"""Fill-in-the-middle: both models' greedy middles against each other and against the ground truth.

A middle is *exact* when it equals the ground truth after stripping surrounding whitespace; `similarity` is
difflib's ratio of the stripped texts (1.0 identical). A flip is a prompt one model completes exactly and the
other does not.
"""

from __future__ import annotations

import difflib
import statistics

from qtools.check.metrics import difference
from qtools.check.suites import FimPrompt
from qtools.check.tools_check import text_diff


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a.strip(), b.strip()).ratio()


def compare_middles(prompts: list[FimPrompt], ref_texts: list[str], quant_texts: list[str]) -> dict:
    """Rates over all prompts and one record per prompt (`diff` on those where the two middles differ)."""
    records = []
    for prompt, ref, quant in zip(prompts, ref_texts, quant_texts, strict=True):
        record = {"id": prompt.id, "reference": ref, "quantised": quant, "same_as_reference": ref == quant}
        if prompt.middle is not None:
            record["truth"] = prompt.middle
            record["ref_exact"] = ref.strip() == prompt.middle.strip()
            record["quant_exact"] = quant.strip() == prompt.middle.strip()
            record["ref_similarity"] = _similarity(ref, prompt.middle)
            record["quant_similarity"] = _similarity(quant, prompt.middle)
        if ref != quant:
            record["diff"] = text_diff(ref, quant)
        records.append(record)
    graded = [record for record in records if "truth" in record]

    def mean(key: str, rows: list[dict]) -> float | None:
        # None over no rows: nothing to grade is "not measured", never NaN (which fails a threshold).
        return statistics.fmean(float(row[key]) for row in rows) if rows else None

    return {
        "count": len(records),
        "graded": len(graded),
        "same_as_reference": mean("same_as_reference", records),
        "exact_ref": mean("ref_exact", graded),
        "exact_quant": mean("quant_exact", graded),
        "exact_drop": difference(mean("ref_exact", graded), mean("quant_exact", graded)),
        "similarity_ref": mean("ref_similarity", graded),
        "similarity_quant": mean("quant_similarity", graded),
        "flips": sum(1 for row in graded if row["ref_exact"] != row["quant_exact"]),
        "prompts": records,
    }
