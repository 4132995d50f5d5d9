"""The experiments' conditions, by name: the MWork layer stages, the ablation conditions (a stage and a
structure), the logit-lens conditions and the languages its token table labels.

Torch-free, so that the workflow can plan its jobs, and figure jobs can label layers, without loading a model
library.
"""

from __future__ import annotations

from collections.abc import Sequence

STAGES: tuple[str, ...] = ("understanding", "task", "generation")


def layer_stages(n_layers: int, understanding: int | None = None, generation: int | None = None) -> list[str]:
    """The MWork stage of every layer: the first N1 understand, the last N2 generate, the rest solve the task.

    Unset N1/N2 scale with depth from the paper's choice for 32 layers (8 and 4).
    """
    n1 = understanding if understanding is not None else max(1, round(n_layers * 8 / 32))
    n2 = generation if generation is not None else max(1, round(n_layers * 4 / 32))
    if n1 < 1 or n2 < 1 or n1 + n2 >= n_layers:
        raise ValueError(
            f"stages.understanding={n1} + stages.generation={n2} must be >= 1 each and leave task layers in a "
            f"{n_layers}-layer model (sum < {n_layers}); lower them or set them to null to scale with depth"
        )
    return ["understanding"] * n1 + ["task"] * (n_layers - n1 - n2) + ["generation"] * n2


#: The paper's ablation conditions: which stage's layers and which structure are deactivated.
CONDITIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "understanding": (("understanding",), ("ffn", "attn_q", "attn_k", "attn_v")),
    "task_attention": (("task",), ("attn_q", "attn_k", "attn_v")),
    "task_ffn": (("task",), ("ffn",)),
    "generation": (("generation",), ("ffn", "attn_q", "attn_k", "attn_v")),
    "all": (STAGES, ("ffn", "attn_q", "attn_k", "attn_v")),
}

#: The language the logit lens compares every document language with.
ENGLISH = "en"


def token_language_names(languages: Sequence[str]) -> list[str]:
    """The languages a token table attributes tokens among: the analysed ones, plus English if absent.

    The ratio compares each document language with English, so English tokens must be labelled
    whatever languages are analysed.
    """
    return list(languages) + ([ENGLISH] if ENGLISH not in languages else [])


def deactivated_condition(set_kind: str | None) -> list[str]:
    """Logit-lens conditions: ``none``, plus ``<set_kind>_deactivated`` when a set kind is deactivated."""
    return ["none"] + ([f"{set_kind}_deactivated"] if set_kind else [])
