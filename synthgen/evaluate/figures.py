"""PNG figures for ``synthgen eval`` and ``synthgen preview``, drawn with Pillow alone (no matplotlib).

- the report figure: real and synthetic samples per class, then the [0, 1] metrics as bars and FID/KID as text,
  and with ``--real-fractions`` the data-efficiency chart (test AUC against real images, without and with
  synthetic ones, 95% intervals as whiskers);
- the memorization figure: the synthetic images closest to a training image, each beside that image;
- the contact sheet: the first images of each class of a dataset.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from synthgen.data import SyntheticImageDataset
from synthgen.errors import SynthgenError
from synthgen.imaging import image_grid, to_8bit
from synthgen.readers import ImageSet

PAD = 6
TEXT_H = 16
BAR_W = 320
SAMPLES_PER_ROW = 8


def _scale(h: int) -> int:
    """Upscale small images (28x28 becomes 84x84) so a sheet is readable; big ones stay as they are."""
    return max(1, 84 // h)


def _tile(images: np.ndarray, ncol: int, scale: int) -> Image.Image:
    """uint8 or uint16 (N, H, W, C) -> one 8-bit RGB grid image, upscaled with nearest-neighbour."""
    grid = image_grid(to_8bit(images), ncol=ncol)  # (rows*(H+2)+2, ncol*(W+2)+2, C)
    img = Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid).convert("RGB")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def _text(lines: list[str], width: int) -> Image.Image:
    img = Image.new("RGB", (width, TEXT_H * len(lines) + 2), "white")
    draw, font = ImageDraw.Draw(img), ImageFont.load_default()
    for i, line in enumerate(lines):
        draw.text((PAD, 1 + i * TEXT_H), line, fill="black", font=font)
    return img


def _stack(blocks: list[Image.Image]) -> Image.Image:
    width = max(b.width for b in blocks) + 2 * PAD
    sheet = Image.new("RGB", (width, sum(b.height + PAD for b in blocks) + PAD), "white")
    y = PAD
    for block in blocks:
        sheet.paste(block, (PAD, y))
        y += block.height + PAD
    return sheet


def _bars(values: list[tuple], width: int) -> Image.Image:
    """Horizontal bars for metrics in [0, 1], each (label, value) or (label, value, low, high) with a 95%
    interval drawn as a black whisker; NaN draws no bar."""
    img = Image.new("RGB", (width, len(values) * (TEXT_H + 4) + 4), "white")
    draw, font, x0 = ImageDraw.Draw(img), ImageFont.load_default(), 230

    def at(v: float) -> int:
        return x0 + int(BAR_W * min(max(v, 0), 1))

    for i, (label, value, *interval) in enumerate(values):
        y = 4 + i * (TEXT_H + 4)
        draw.text((PAD, y), label, fill="black", font=font)
        draw.rectangle((x0, y, x0 + BAR_W, y + TEXT_H - 2), outline=(180, 180, 180))
        if np.isfinite(value):
            draw.rectangle((x0, y, at(value), y + TEXT_H - 2), fill=(70, 110, 190))
            text = f"{value:.3f}"
            if interval:
                mid = y + (TEXT_H - 2) // 2
                draw.line((at(interval[0]), mid, at(interval[1]), mid), fill="black", width=2)
                text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
            draw.text((x0 + BAR_W + PAD, y), text, fill="black", font=font)
    return img


CHART_H = 230
REAL_COLOUR, SYNTHETIC_COLOUR = (210, 110, 30), (70, 110, 190)  # orange: never a gray sample pixel


def _efficiency_chart(rows: list[dict], width: int) -> Image.Image:
    """Test AUC against the number of real training images (log scale), real only and with the recipe's
    synthetic images; each point's 95% interval is a whisker."""
    img = Image.new("RGB", (width, CHART_H), "white")
    draw, font = ImageDraw.Draw(img), ImageFont.load_default()
    left, right, top, bottom = 60, width - 20, 36, CHART_H - 34  # the plot area
    series = [("real only", "real", REAL_COLOUR, -4),
              (f"real + synthetic ({rows[0]['recipe']})", rows[0]["recipe"], SYNTHETIC_COLOUR, 4)]
    values = [v for r in rows for _, arm, _, _ in series for v in (r["arms"][arm]["low"], r["arms"][arm]["high"])]
    lo, hi = np.floor(min(values) / 0.05 - 0.2) * 0.05, np.ceil(max(values) / 0.05 + 0.2) * 0.05
    lo, hi = max(0.0, lo), min(1.0, hi)  # a 0.05 grid around every interval
    counts = np.log([r["real_images"] for r in rows])
    span = float(counts.max() - counts.min()) or 1.0

    def xy(count: float, auc: float) -> tuple[int, int]:
        x = left + 30 + (right - left - 60) * ((count - counts.min()) / span if len(rows) > 1 else 0.5)
        return int(x), int(bottom - (bottom - top) * (auc - lo) / (hi - lo))

    draw.text((PAD, 2), "test AUC against real training images (log scale), mean and 95% interval", fill="black",
              font=font)
    draw.rectangle((left, top, right, bottom), outline=(180, 180, 180))
    for tick in np.arange(lo, hi + 1e-9, 0.05 if hi - lo <= 0.3 else 0.1):
        y = xy(counts.min(), tick)[1]
        draw.line((left - 4, y, left, y), fill="black")
        draw.text((PAD + 10, y - 6), f"{tick:.2f}", fill="black", font=font)
    for r, c in zip(rows, counts):
        x = xy(c, lo)[0]
        draw.text((x - 20, bottom + 4), f"{r['real_images']} ({r['fraction']:g})", fill="black", font=font)
    for i, (label, arm, colour, dx) in enumerate(series):
        points = [(x + dx, y) for x, y in (xy(c, r["arms"][arm]["auc"]) for r, c in zip(rows, counts))]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for (x, y), r, c in zip(points, rows, counts):
            y_low, y_high = xy(c, r["arms"][arm]["low"])[1], xy(c, r["arms"][arm]["high"])[1]
            draw.line((x, y_low, x, y_high), fill=colour, width=1)
            draw.rectangle((x - 3, y - 3, x + 3, y + 3), fill=colour)
        draw.rectangle((left + 10 + 230 * i, 20, left + 18 + 230 * i, 28), fill=colour)
        draw.text((left + 24 + 230 * i, 18), label, fill=colour, font=font)
    draw.text((right - 150, bottom + 18), "real training images (share)", fill="black", font=font)
    return img


def _class_blocks(train: ImageSet, names: list[str], synthetic: np.ndarray, labels: np.ndarray
                  ) -> list[Image.Image]:
    scale, blocks = _scale(train.images.shape[1]), []
    groups = list(enumerate(names)) if (labels >= 0).all() else [(-1, "all")]
    for c, name in groups:
        real = train.images[train.labels == c] if c >= 0 else train.images
        syn = synthetic[labels == c] if c >= 0 else synthetic
        rows = [_tile(x[:SAMPLES_PER_ROW], SAMPLES_PER_ROW, scale) for x in (real, syn) if len(x)]
        blocks.append(_text([f"class {name}: real (top row), synthetic (bottom row)"], rows[0].width))
        blocks += rows
    return blocks


def _metric_lines(report: dict) -> tuple[list[str], list[tuple]]:
    lines, bars = [], []
    for name, space in report["feature_spaces"].items():
        if "skipped" in space:
            lines.append(f"{name} features: skipped")
            continue
        fk, pr = space["fid_kid"], space["precision_recall"]
        lines.append(f"{name} features: FID {fk['fid']:.3f} (real test split {fk['baseline_real_test']['fid']:.3f})"
                     f"   KID {fk['kid']:.4f} ({fk['baseline_real_test']['kid']:.4f})")
        if "precision" in pr:
            bars += [(f"precision, {name}", pr["precision"]), (f"recall, {name}", pr["recall"])]
    bars.append(("near-copies (pixel or feature)", report["memorization"]["near_copy_fraction_either"]))
    down = report["downstream"]
    if "skipped" not in down:
        lines.append(f"downstream AUC: mean of {len(down['seeds'])} seeds, 95% paired bootstrap interval")
        bars += [(f"AUC, trained on {name}", a["auc"], a["low"], a["high"]) for name, a in down["arms"].items()]
        lines += [f"{name}: {text}" for name, text in down["verdicts"].items()]
        for row in down["real_fractions"]:
            gain = row["gains"]["gain"]
            lines.append(f"{row['fraction']:g} of real ({row['real_images']}): real {row['arms']['real']['auc']:.3f}"
                         f", +synthetic {row['arms'][row['recipe']]['auc']:.3f}, gain {gain['auc']:+.3f} "
                         f"[{gain['low']:+.3f}, {gain['high']:+.3f}]")
    if "seconds" in report:
        lines.append("took " + ", ".join(f"{k} {v['wall']:.0f} s" for k, v in report["seconds"].items()))
    return lines, bars


def draw_report(report: dict, train: ImageSet, synthetic: np.ndarray, labels: np.ndarray, path: str) -> None:
    """The report figure: samples per class (real over synthetic), metric text and bars.

    Args:
        report: the dict :func:`synthgen.evaluate.report.evaluate` builds (fid_kid ... tstr filled in).
        train: the real training images.
        synthetic: uint8 (N, H, W, C) synthetic images; labels (N,) in the real class indices, or all -1.
        path: local PNG to write.
    """
    blocks = _class_blocks(train, report["real"]["class_names"], synthetic, labels)
    width = max(max(b.width for b in blocks), 230 + BAR_W + 60)
    lines, bars = _metric_lines(report)
    title = f"synthgen eval: {report['synthetic']['path']} vs {report['real']['path']}"
    charts = [_efficiency_chart(report["downstream"]["real_fractions"], width)] \
        if report["downstream"].get("real_fractions") else []
    _stack([_text([title], width), *blocks, _text(lines, width), _bars(bars, width), *charts]).save(path, format="PNG")


def draw_memorization(pairs: list[dict], synthetic: np.ndarray, synthetic_index: np.ndarray,
                      train_images: np.ndarray, train_rows: np.ndarray, path: str, ncol: int = 4) -> None:
    """The worst pairs of the memorization audit: each synthetic image beside its nearest training image.

    Args:
        pairs: ``report["memorization"]["worst_pairs"]``, closest first.
        synthetic, synthetic_index: the evaluated synthetic images and their dataset indices.
        train_images, train_rows: uint8 (N, H, W, C) training images and their rows (``real_train_row``).
        path: local PNG to write.
    """
    position = {int(i): j for j, i in enumerate(synthetic_index)}
    train_position = {int(r): j for j, r in enumerate(train_rows)}
    scale, cells = _scale(synthetic.shape[1]), []
    for pair in pairs:
        real = train_images[train_position[pair["real_train_row"]]]
        both = np.stack([synthetic[position[pair["synthetic_index"]]], real])
        tile = _tile(both, 2, scale)
        caption = [f"#{pair['synthetic_index']} vs train {pair['real_train_row']}",
                   f"ratio {pair['pixel_ratio']:.2f} rmse {pair['pixel_rmse']:.3f}"
                   + (" COPY" if pair["near_copy"] else "")]
        cells.append(_stack([tile, _text(caption, max(tile.width, 170))]))
    if not cells:
        raise SynthgenError("no synthetic images to draw")
    rows = [cells[i:i + ncol] for i in range(0, len(cells), ncol)]
    row_images = []
    for row in rows:
        img = Image.new("RGB", (sum(c.width for c in row), max(c.height for c in row)), "white")
        x = 0
        for cell in row:
            img.paste(cell, (x, 0))
            x += cell.width
        row_images.append(img)
    header = _text(["synthetic (left) beside its nearest real training image (right), closest first"],
                   row_images[0].width)
    _stack([header, *row_images]).save(path, format="PNG")


def contact_sheet(path_or_uri: str, out: str, per_class: int = 16) -> dict[str, int]:
    """Write a contact sheet of the first ``per_class`` images of each class of a synthgen dataset.

    Reads rows in index order and stops once every class is full, so a huge dataset costs a few row groups.

    Returns:
        Images drawn per class name ("all" for an unconditional model).
    """
    if per_class < 1:
        raise SynthgenError(f"--per-class must be at least 1, got {per_class}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise SynthgenError(f"--out {out}: its folder does not exist")
    ds = SyntheticImageDataset(path_or_uri)
    names = ds.class_names or ["all"]
    picked: dict[int, list[np.ndarray]] = {c: [] for c in range(len(names))}
    for i in range(len(ds)):
        row = ds.row(i)
        c = max(int(row["label"]), 0)  # unconditional rows (-1) all go to "all"
        if c in picked and len(picked[c]) < per_class:
            picked[c].append(row["image"])
        if all(len(v) >= per_class for v in picked.values()):
            break
    blocks, scale = [], _scale(ds.row(0)["image"].shape[0])
    for c, name in enumerate(names):
        if picked[c]:
            grid = _tile(np.stack(picked[c]), min(per_class, SAMPLES_PER_ROW), scale)
            blocks += [_text([f"{name} ({len(picked[c])})"], grid.width), grid]
    _stack([_text([f"{path_or_uri}: {len(ds)} images"], max(b.width for b in blocks)), *blocks]).save(
        out, format="PNG")
    return {names[c]: len(v) for c, v in picked.items()}
