#!/usr/bin/env python3
"""The training step of `elasticface bench train`, in PyTorch eager, for a side-by-side ratio.

Same network structure (MobileFaceNet or iResNet as in core/src/backbone), the ElasticFace-Arc
loss as the official release computes it (s = 64, m ~ N(0.5, 0.05) per sample), SGD with
momentum 0.9 and weight decay 5e-4, the backbone's global gradient norm clipped at 5, random
faces already in memory. Warm-up steps are excluded and medians are printed, in the same
columns as the Rust benchmark.

    python3 bench/pytorch_step.py --backbones mobilefacenet --batch-sizes 64 --classes 3469 \
        --threads 2 --warmup 1 --steps 3

PyTorch is a benchmark dependency only (`pip install torch`); nothing else needs it.
"""

import argparse
import json
import math
import statistics
import time

import torch
from torch import nn
import torch.nn.functional as F


class ConvUnit(nn.Module):
    """Convolution, batch norm and optionally PReLU."""

    def __init__(self, inputs, outputs, kernel, stride, padding, groups=1, activation=True):
        super().__init__()
        self.conv = nn.Conv2d(inputs, outputs, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(outputs, eps=1e-5)
        self.prelu = nn.PReLU(outputs) if activation else None

    def forward(self, x):
        x = self.bn(self.conv(x))
        return self.prelu(x) if self.prelu is not None else x


class DepthWise(nn.Module):
    def __init__(self, inputs, outputs, expanded, stride, residual):
        super().__init__()
        self.expand = ConvUnit(inputs, expanded, 1, 1, 0)
        self.depthwise = ConvUnit(expanded, expanded, 3, stride, 1, groups=expanded)
        self.project = ConvUnit(expanded, outputs, 1, 1, 0, activation=False)
        self.residual = residual

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class MobileFaceNet(nn.Module):
    def __init__(self, embedding=512):
        super().__init__()
        self.stem = ConvUnit(3, 64, 3, 2, 1)
        self.stem_depthwise = ConvUnit(64, 64, 3, 1, 1, groups=64)
        blocks = []
        for inputs, outputs, expanded, repeats in [(64, 64, 128, 4), (64, 128, 256, 6), (128, 128, 512, 2)]:
            blocks.append(DepthWise(inputs, outputs, expanded, 2, False))
            width = 128 if outputs == 64 else 256
            blocks += [DepthWise(outputs, outputs, width, 1, True) for _ in range(repeats)]
        self.blocks = nn.Sequential(*blocks)
        self.conv_sep = ConvUnit(128, 512, 1, 1, 0)
        self.gdc = ConvUnit(512, 512, 7, 1, 0, groups=512, activation=False)
        self.linear = nn.Linear(512, embedding, bias=False)
        self.features = nn.BatchNorm1d(embedding, eps=1e-5)

    def forward(self, x):
        x = self.gdc(self.conv_sep(self.blocks(self.stem_depthwise(self.stem(x)))))
        return self.features(self.linear(torch.flatten(x, 1)))


class IBasicBlock(nn.Module):
    def __init__(self, inputs, planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inputs, eps=1e-5)
        self.conv1 = nn.Conv2d(inputs, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inputs != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inputs, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
            )

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    def __init__(self, layers, embedding=512):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        stages, inputs = [], 64
        for planes, blocks in zip((64, 128, 256, 512), layers):
            stage = [IBasicBlock(inputs, planes, 2)] + [IBasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            inputs = planes
        self.stages = nn.Sequential(*stages)
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.fc = nn.Linear(512 * 7 * 7, embedding)
        self.features = nn.BatchNorm1d(embedding, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward(self, x):
        x = self.stages(self.prelu(self.bn1(self.conv1(x))))
        return self.features(self.fc(torch.flatten(self.bn2(x), 1)))


BACKBONES = {
    "mobilefacenet": MobileFaceNet,
    "iresnet18": lambda: IResNet((2, 2, 2, 2)),
    "iresnet50": lambda: IResNet((3, 4, 14, 3)),
}


def elastic_arc_loss(embeddings, centres, labels, s=64.0, m=0.5, sigma=0.05):
    """ElasticFace-Arc as the release computes it: cos θ from normalised vectors, a margin drawn
    per sample added to the target angle, cross-entropy of the scaled logits."""
    cos = F.linear(F.normalize(embeddings), F.normalize(centres)).clamp(-1.0, 1.0)
    margins = torch.normal(m, sigma, size=(labels.shape[0],))
    theta = cos.acos()
    target = torch.zeros_like(cos).scatter_(1, labels[:, None], margins[:, None])
    return F.cross_entropy(s * torch.cos(theta + target), labels)


def time_step(name, batch, classes, warmup, steps):
    torch.manual_seed(1)
    backbone = BACKBONES[name]()
    centres = nn.Parameter(torch.randn(classes, 512) * 0.01)
    optimizer = torch.optim.SGD(
        [{"params": backbone.parameters()}, {"params": [centres]}], lr=0.1, momentum=0.9, weight_decay=5e-4
    )
    faces = torch.rand(batch, 3, 112, 112) * 2 - 1
    labels = torch.randint(0, classes, (batch,))
    rows = {"forward": [], "backward": [], "optimizer": [], "step": []}
    for index in range(warmup + steps):
        start = time.perf_counter()
        loss = elastic_arc_loss(backbone(faces), centres, labels)
        forward = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backward = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5.0)
        optimizer.step()
        end = time.perf_counter()
        if not math.isfinite(loss.item()):
            raise SystemExit(f"{name}: loss is not finite at step {index}")
        if index >= warmup:
            rows["forward"].append(forward - start)
            rows["backward"].append(backward - forward)
            rows["optimizer"].append(end - backward)
            rows["step"].append(end - start)
    medians = {key: statistics.median(values) for key, values in rows.items()}
    return {
        "backbone": name,
        "batch_size": batch,
        "classes": classes,
        **medians,
        "images_per_second": batch / medians["step"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="mobilefacenet,iresnet18,iresnet50")
    parser.add_argument("--batch-sizes", default="32,128")
    parser.add_argument("--classes", default="1000,10000")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"PyTorch {torch.__version__} eager on the CPU, {args.threads} threads")
    print(f"{'backbone':<14} {'batch':>6} {'classes':>7} {'forward':>10} {'backward':>10} {'optimizer':>10} {'step':>10} {'images/s':>9}")
    rows = []
    for name in args.backbones.split(","):
        for batch in map(int, args.batch_sizes.split(",")):
            for classes in map(int, args.classes.split(",")):
                row = time_step(name, batch, classes, args.warmup, args.steps)
                rows.append(row)
                print(
                    f"{name:<14} {batch:>6} {classes:>7} {row['forward']:>9.3f}s {row['backward']:>9.3f}s"
                    f" {row['optimizer']:>9.3f}s {row['step']:>9.3f}s {row['images_per_second']:>9.1f}"
                )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)


if __name__ == "__main__":
    main()
