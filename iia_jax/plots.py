"""Figures for the CLI, notebooks and docs (matplotlib, Agg-safe)."""
from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib
    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def tile(images, cols: int = 8, border: int = 1) -> np.ndarray:
    """``[N, H, W, C]`` images in [-1, 1] -> one mosaic in [0, 1] with grey borders between tiles
    (``[rows*(H+b), cols*(W+b)]``, or with a trailing C axis for colour images)."""
    x = np.clip((np.asarray(images, np.float32) + 1.0) / 2.0, 0.0, 1.0)
    x = np.pad(x, ((0, 0), (0, border), (0, border), (0, 0)), constant_values=0.5)
    n, h, w, c = x.shape
    rows = -(-n // cols)
    pad = np.full((rows * cols - n, h, w, c), 0.5, np.float32)
    grid = np.concatenate([x, pad]).reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * h, cols * w, c)[: rows * h - border, : cols * w - border]
    return grid[..., 0] if c == 1 else grid


def sample_grid(panels: dict, path, title: str | None = None, cols: int = 8):
    """Side-by-side mosaics, e.g. ``{"fine reference": x_ref, "base": x_base, "IIA": x_iia}``.

    ``panels`` may also map row labels to such dicts, giving one row of panels per entry.
    """
    plt = _plt()
    rows = panels if isinstance(next(iter(panels.values())), dict) else {"": panels}
    ncols = max(len(r) for r in rows.values())
    first = np.asarray(next(iter(next(iter(rows.values())).values())))
    aspect = -(-len(first) // cols) / cols            # mosaic height / width, for the figure size
    fig, axes = plt.subplots(len(rows), ncols, figsize=(3 * ncols, (3 * aspect + 0.5) * len(rows)),
                             squeeze=False)
    for ax_row, (row_name, row) in zip(axes, rows.items()):
        for ax, (name, images) in zip(ax_row, row.items()):
            ax.imshow(tile(images, cols), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"{row_name} {name}".strip(), fontsize=9)
            ax.axis("off")
        for ax in ax_row[len(row):]:          # rows with fewer panels than the widest one
            ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def coefficient_plot(coeffs_by_name: dict, path):
    """One panel per fitted :class:`~iia_jax.Coefficients`: each feature's coefficient per step."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(coeffs_by_name), figsize=(4 * len(coeffs_by_name), 3.2), squeeze=False)
    for ax, (name, c) in zip(axes[0], coeffs_by_name.items()):
        values = np.asarray(c.values)
        for k in range(values.shape[1]):
            ax.plot(np.arange(values.shape[0]), values[:, k], "o-", ms=3, label=f"c[:, {k}]")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"{name} ({c.preset}, r={c.history})", fontsize=9)
        ax.set_xlabel("step i")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
