"""Caption scores against several references per image: BLEU-1..4, ROUGE-L and CIDEr from the
COCO caption evaluation code (``pycocoevalcap``, the reference implementation).

Texts are normalised as the COCO evaluation's tokenizer does (lower case, punctuation removed)
but in Python, so no Java is needed. METEOR (the same package's Java implementation) is
computed on request when Java is installed; SPICE, which downloads Stanford CoreNLP on first
use, is not.
CIDEr's document frequencies come from the references of the scored set (as in the COCO code),
so it is comparable between runs on the same split, not across datasets.
"""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"[^\w\s]")


def normalise(text: str) -> str:
    """Lower case, punctuation removed, single spaces."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def caption_scores(hypotheses: list[str], references: list[list[str]],
                   meteor: bool = False) -> dict[str, float]:
    """``bleu1``..``bleu4``, ``rougeL`` and ``cider`` of one caption per image against its
    references (corpus-level BLEU, mean ROUGE-L and CIDEr-D over images); ``meteor`` too when
    asked (it needs Java: a clear error without it)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} captions for {len(references)} reference sets")
    if not hypotheses:
        return {}
    # an empty caption is scored as a word that matches nothing (the COCO code needs one)
    res = {i: [normalise(h) or "<empty>"] for i, h in enumerate(hypotheses)}
    gts = {i: [normalise(r) for r in refs] for i, refs in enumerate(references)}
    for i, refs in gts.items():
        if not refs:
            raise ValueError(f"image {i} has no reference caption")
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    scores = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
    scores.update(rougeL=float(rouge), cider=float(cider))
    if meteor:
        scores["meteor"] = meteor_score(gts, res)
    return scores


def meteor_score(gts: dict, res: dict) -> float:
    import shutil

    from lmvision.errors import UserError

    if shutil.which("java") is None:
        raise UserError("METEOR needs Java (a `java` on the PATH), e.g. apt-get install "
                        "default-jre-headless; or set strategy.meteor=false")
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        return float(scorer.compute_score(gts, res)[0])
    finally:
        scorer.meteor_p.kill()


def mentions(caption: str, name: str) -> bool:
    """Whether ``caption`` names the class ``name`` as a word (``"red circle"`` names
    ``circle``; ``"red_circle"`` class names are matched word by word)."""
    words = normalise(caption).split()
    parts = normalise(name.replace("_", " ")).split()
    return all(part in words for part in parts)
