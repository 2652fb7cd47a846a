"""Figures (matplotlib, Agg backend) and report.md, from run directories."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import torch  # noqa: E402


def digit_grid(images: torch.Tensor, captions: list[str] | list[int], path: Path, title: str,
               columns: int = 10) -> None:
    """A grid of uint8 (N, 28, 28) digits, each captioned."""
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.3 + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].cpu().numpy(), cmap="gray_r", vmin=0, vmax=255)
            ax.set_title(str(captions[i]), fontsize=9)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
