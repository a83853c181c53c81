"""Procedural radiograph-like images: a chest phantom plus configurable synthetic findings.

Everything is drawn with torch from a seeded generator, vectorised over a chunk of images, so a split of a
few thousand 64 px images takes about a second and the same seed always gives the same pixels.

Anatomy (every image): body ellipse, two dark lung fields, bright mediastinum / heart and spine, faint
ribs, low-frequency density variation and quantum noise; position, scale and exposure vary per image.

Findings (each can be present or absent per image), with the intent of each:
  * ``opacity``  1-3 small soft focal opacities inside a lung (the embedded downstream task);
  * ``cavity``   a thin-walled ring lesion with a dark centre;
  * ``effusion`` a bright fluid level at one lung base with a lateral meniscus;
  * ``cardiomegaly`` an enlarged heart shadow;
  * ``line``     a thin straight linear density (plate atelectasis / septal line).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

FINDINGS: tuple[str, ...] = ("opacity", "cavity", "effusion", "cardiomegaly", "line")


class Canvas:
    """Per-chunk state: pixel grid, per-image anatomy parameters and the random generator."""

    def __init__(self, n: int, size: int, gen: torch.Generator) -> None:
        self.n, self.size, self.gen = n, size, gen
        axis = torch.linspace(-1.0, 1.0, size)
        self.y = axis.view(1, size, 1)
        self.x = axis.view(1, 1, size)
        self.cx = self.uniform(-0.06, 0.06)
        self.cy = self.uniform(-0.05, 0.05)
        self.scale = self.uniform(0.88, 1.05)

    def uniform(self, lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(self.n, *(shape or (1, 1)), generator=self.gen)

    def ellipse(self, cx: Tensor, cy: Tensor, rx: Tensor, ry: Tensor, sharp: float = 12.0) -> Tensor:
        """Soft indicator (0..1) of an axis-aligned ellipse, broadcast over the grid."""
        r2 = ((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2
        return torch.sigmoid((1.0 - r2) * sharp)

    def lung_centre(self, side: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Centre and radii of the left (side=-1) or right (+1) lung; ``side`` is (n, ..., 1, 1)."""
        extra = (1,) * (side.ndim - 3)
        cx, cy, s = (t.view(self.n, *extra, 1, 1) for t in (self.cx, self.cy, self.scale))
        return cx + side * 0.34 * s, cy - 0.05, 0.24 * s, 0.52 * s

    def point_in_lung(self, k: int) -> tuple[Tensor, Tensor]:
        """k random points per image inside either lung field, each of shape (n, k, 1, 1)."""
        side = torch.randint(0, 2, (self.n, k, 1, 1), generator=self.gen).float() * 2 - 1
        lx, ly, rx, ry = self.lung_centre(side)
        theta = torch.rand(self.n, k, 1, 1, generator=self.gen) * 2 * math.pi
        rad = torch.rand(self.n, k, 1, 1, generator=self.gen).sqrt() * 0.7
        return lx + rad * rx * torch.cos(theta), ly + rad * ry * torch.sin(theta)

    def smooth_noise(self, cells: int, amp: float) -> Tensor:
        coarse = torch.randn(self.n, 1, cells, cells, generator=self.gen)
        fine = F.interpolate(coarse, size=(self.size, self.size), mode="bicubic", align_corners=True)
        return fine.squeeze(1) * amp


def anatomy(c: Canvas) -> tuple[Tensor, Tensor]:
    """The normal chest: returns (image, lung mask), both (n, size, size)."""
    body = c.ellipse(c.cx, c.cy + 0.05, 0.92 * c.scale, 1.05 * c.scale, sharp=6.0)
    lungs = sum(c.ellipse(*c.lung_centre(torch.full((c.n, 1, 1), s))) for s in (-1.0, 1.0))
    ribs_phase = c.uniform(0, 2 * math.pi)
    ribs = 0.5 + 0.5 * torch.sin((c.y - 0.45 * (c.x - c.cx) ** 2) * 22.0 + ribs_phase)
    spine = torch.sigmoid((0.07 - (c.x - c.cx).abs()) * 60.0)
    heart = c.ellipse(c.cx + 0.06, c.cy + 0.22, 0.2 * c.scale, 0.2 * c.scale)
    img = 0.12 + 0.55 * body - 0.38 * lungs + 0.07 * lungs * ribs**4 + 0.22 * spine * body
    img = img + 0.3 * heart * lungs.clamp(max=1) + 0.1 * heart
    img = img + c.smooth_noise(6, 0.035)
    return img, lungs.clamp(0, 1)


def add_opacity(c: Canvas, img: Tensor, lungs: Tensor, on: Tensor) -> Tensor:
    k = 3
    px, py = c.point_in_lung(k)
    count = torch.randint(1, k + 1, (c.n, 1, 1, 1), generator=c.gen)
    keep = (torch.arange(k).view(1, k, 1, 1) < count).float()
    sigma = 0.05 + 0.04 * torch.rand(c.n, k, 1, 1, generator=c.gen)
    amp = 0.12 + 0.1 * torch.rand(c.n, k, 1, 1, generator=c.gen)
    d2 = (c.x.unsqueeze(1) - px) ** 2 + (c.y.unsqueeze(1) - py) ** 2
    blobs = (keep * amp * torch.exp(-d2 / (2 * sigma**2))).sum(1)
    return img + on * blobs * (0.3 + 0.7 * lungs)


def add_cavity(c: Canvas, img: Tensor, lungs: Tensor, on: Tensor) -> Tensor:
    px, py = (t.squeeze(1) for t in c.point_in_lung(1))
    radius = c.uniform(0.1, 0.15)
    r = ((c.x - px) ** 2 + (c.y - py) ** 2).sqrt()
    wall = torch.exp(-((r - radius) ** 2) / (2 * 0.025**2))
    hole = torch.sigmoid((radius - 0.04 - r) * 60.0)
    return img + on * (0.22 * wall - 0.06 * hole) * lungs


def add_effusion(c: Canvas, img: Tensor, lungs: Tensor, on: Tensor) -> Tensor:
    side = torch.randint(0, 2, (c.n, 1, 1), generator=c.gen).float() * 2 - 1
    lx, ly, rx, ry = c.lung_centre(side)
    level = ly + ry * c.uniform(0.25, 0.55)
    lateral = ((c.x - lx) * side / rx).clamp(min=0)
    fluid = torch.sigmoid((c.y - level + 0.25 * ry * lateral**2) * 30.0)
    in_lung = c.ellipse(lx, ly, rx, ry)
    return img + on * 0.3 * fluid * in_lung


def add_cardiomegaly(c: Canvas, img: Tensor, lungs: Tensor, on: Tensor) -> Tensor:
    grown = c.uniform(1.3, 1.5)
    heart_big = c.ellipse(c.cx + 0.06, c.cy + 0.22, 0.2 * c.scale * grown, 0.2 * c.scale * grown)
    heart = c.ellipse(c.cx + 0.06, c.cy + 0.22, 0.2 * c.scale, 0.2 * c.scale)
    return img + on * 0.35 * (heart_big - heart).clamp(min=0) * (0.4 + 0.6 * lungs)


def add_line(c: Canvas, img: Tensor, lungs: Tensor, on: Tensor) -> Tensor:
    px, py = (t.squeeze(1) for t in c.point_in_lung(1))
    angle = c.uniform(-0.5, 0.5)
    half = c.uniform(0.12, 0.22)
    dx, dy = torch.cos(angle), torch.sin(angle)
    along = ((c.x - px) * dx + (c.y - py) * dy).clamp(-1, 1)
    across = (-(c.x - px) * dy + (c.y - py) * dx).abs()
    seg = torch.sigmoid((half - along.abs()) * 40.0) * torch.exp(-(across**2) / (2 * 0.02**2))
    return img + on * 0.25 * seg * lungs


PAINTERS: dict[str, Callable[[Canvas, Tensor, Tensor, Tensor], Tensor]] = {
    "opacity": add_opacity,
    "cavity": add_cavity,
    "effusion": add_effusion,
    "cardiomegaly": add_cardiomegaly,
    "line": add_line,
}


def render(present: Tensor, findings: tuple[str, ...], size: int, gen: torch.Generator) -> Tensor:
    """Draw ``len(present)`` images; ``present[i, j]`` says whether finding ``findings[j]`` is in image i.

    Returns uint8 grayscale images of shape (n, size, size).
    """
    c = Canvas(len(present), size, gen)
    img, lungs = anatomy(c)
    for j, name in enumerate(findings):
        img = PAINTERS[name](c, img, lungs, present[:, j].float().view(-1, 1, 1))
    exposure = c.uniform(0.85, 1.15)
    img = (img - 0.3) * exposure + 0.3
    img = img + 0.03 * torch.randn(img.shape, generator=gen)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def render_split(
    present: Tensor, findings: tuple[str, ...], size: int, seed: int, chunk: int = 256
) -> Tensor:
    """Render a whole split in chunks (bounded memory at 224 px); deterministic in ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    parts = [render(present[i : i + chunk], findings, size, gen) for i in range(0, len(present), chunk)]
    return torch.cat(parts) if parts else torch.empty(0, size, size, dtype=torch.uint8)
